"""`featcache manifest <dataset>` converters and `featcache manifest check`."""
from __future__ import annotations

import json
import os
from typing import Optional

import typer

from featcache.cli.app import app, user_errors

manifest_app = typer.Typer(help="Build manifests from standard datasets' folders and split files, and check them.", no_args_is_help=True)
app.add_typer(manifest_app, name="manifest")
_OUT = typer.Option(..., "--out", "-o", help="The manifest CSV to write.")
_VAL = typer.Option(0.1, help="Fraction of train carved into val (deterministic, seeded).")
_SEED = typer.Option(0, help="Seed of the val carve.")


def _convert(out: str, root: str, converter, *args) -> None:
    from featcache.data.manifest import provenance_path, write_manifest

    with user_errors():
        rows, notes = converter(root, *args)
        write_manifest(rows, out, root, notes, source={"converter": converter.__name__, "arguments": list(args)})
    counts = {s: sum(r.split == s for r in rows) for s in ("train", "val", "test")}
    labels = len({lb for r in rows for lb in r.label.split(";") if lb})
    typer.echo(f"wrote {out} (provenance: {provenance_path(out)}): {len(rows)} videos {counts}, {labels} labels; "
               f"check it with featcache manifest check {out}")


_SPLIT_ID = typer.Option("1", help="Official split 1, 2 or 3, or several (1,2,3): one manifest each, "
                                   "--out NAME.csv becoming NAME_s1.csv ... (or put {split} in --out).")


def split_outputs(out: str, split_ids: str) -> list[tuple[int, str]]:
    """(split id, manifest path) for ``--split-id 1`` or ``1,2,3``: one id writes ``out`` itself;
    several write ``out`` with ``{split}`` filled in, or ``NAME_s<N>.csv``."""
    from featcache.errors import FeatcacheError

    try:
        ids = [int(v) for v in split_ids.split(",")]
    except ValueError:
        raise FeatcacheError(f"--split-id: expected 1, 2, 3 or a list such as 1,2,3, got {split_ids!r}") from None
    if len(set(ids)) != len(ids):
        raise FeatcacheError(f"--split-id: {split_ids!r} repeats a split")
    if "{split}" in out:
        return [(i, out.replace("{split}", str(i))) for i in ids]
    if len(ids) == 1:
        return [(ids[0], out)]
    stem, ext = os.path.splitext(out)
    return [(i, f"{stem}_s{i}{ext or '.csv'}") for i in ids]


def _convert_splits(out: str, root: str, converter, splits: str, split_ids: str, *args) -> None:
    with user_errors():
        outputs = split_outputs(out, split_ids)
    for split_id, path in outputs:
        _convert(path, root, converter, splits, split_id, *args)


@manifest_app.command("ucf101", epilog="Examples:\n\n  featcache manifest ucf101 UCF-101 --splits ucfTrainTestlist --split-id 1 --out ucf101_s1.csv\n\n"
                                       "  featcache manifest ucf101 UCF-101 --splits ucfTrainTestlist --split-id 1,2,3 --out ucf101.csv   # ucf101_s1.csv, _s2, _s3")
def manifest_ucf101(root: str = typer.Argument(..., help="Folder with <Class>/v_<Class>_gXX_cYY.avi."),
                    splits: str = typer.Option(..., help="Folder with classInd.txt, trainlist0N.txt, testlist0N.txt."),
                    split_id: str = _SPLIT_ID,
                    out: str = _OUT, val_fraction: float = _VAL, seed: int = _SEED):
    """UCF101 from its official split files (val carved from train by performer group)."""
    from featcache.data import converters

    _convert_splits(out, root, converters.ucf101, splits, split_id, val_fraction, seed)


@manifest_app.command("hmdb51", epilog="Examples:\n\n  featcache manifest hmdb51 hmdb51_org --splits testTrainMulti_7030_splits --out hmdb51_s1.csv\n\n"
                                       "  featcache manifest hmdb51 hmdb51_org --splits testTrainMulti_7030_splits --split-id 1,2,3 --out hmdb51.csv")
def manifest_hmdb51(root: str = typer.Argument(..., help="Folder with <class>/<video>.avi."),
                    splits: str = typer.Option(..., help="Folder with <class>_test_split<N>.txt files."),
                    split_id: str = _SPLIT_ID,
                    out: str = _OUT, val_fraction: float = _VAL, seed: int = _SEED):
    """HMDB51 from its official split files."""
    from featcache.data import converters

    _convert_splits(out, root, converters.hmdb51, splits, split_id, val_fraction, seed)


@manifest_app.command("kinetics", epilog="Example:\n\n  featcache manifest kinetics k400 --csv train.csv --csv validate.csv --out k400.csv")
def manifest_kinetics(root: str = typer.Argument(..., help="Folder holding the clips (any depth)."),
                      csv_files: list[str] = typer.Option(..., "--csv", help="Official CSV(s) (repeatable)."),
                      out: str = _OUT):
    """Kinetics-400/600/700 from the official CSVs."""
    from featcache.data import converters

    _convert(out, root, converters.kinetics, csv_files)


@manifest_app.command("ssv2", epilog="Example:\n\n  featcache manifest ssv2 20bn-something-something-v2 --labels labels.json --train train.json --val validation.json --out ssv2.csv")
def manifest_ssv2(root: str = typer.Argument(..., help="Folder with <id>.webm."),
                  labels: str = typer.Option(..., help="something-something-v2-labels.json."),
                  train_json: str = typer.Option(..., "--train", help="something-something-v2-train.json."),
                  val_json: str = typer.Option(..., "--val", help="something-something-v2-validation.json."),
                  test_json: Optional[str] = typer.Option(None, "--test", help="something-something-v2-test.json."),
                  out: str = _OUT):
    """Something-Something v2 from the official JSON files."""
    from featcache.data import converters

    _convert(out, root, converters.ssv2, labels, train_json, val_json, test_json)


@manifest_app.command("diving48", epilog="Example:\n\n  featcache manifest diving48 rgb --train Diving48_V2_train.json --test Diving48_V2_test.json --out diving48.csv")
def manifest_diving48(root: str = typer.Argument(..., help="Folder with <vid_name>.mp4."),
                      train_json: str = typer.Option(..., "--train"), test_json: str = typer.Option(..., "--test"),
                      out: str = _OUT, val_fraction: float = _VAL, seed: int = _SEED):
    """Diving48 from the official JSON files."""
    from featcache.data import converters

    _convert(out, root, converters.diving48, train_json, test_json, val_fraction, seed)


@manifest_app.command("charades", epilog="Example:\n\n  featcache manifest charades Charades_v1_480 --train Charades_v1_train.csv --test Charades_v1_test.csv --classes Charades_v1_classes.txt --out charades.csv")
def manifest_charades(root: str = typer.Argument(..., help="Folder with <id>.mp4."),
                      train_csv: str = typer.Option(..., "--train"), test_csv: str = typer.Option(..., "--test"),
                      classes: str = typer.Option(..., help="Charades_v1_classes.txt."),
                      out: str = _OUT, val_fraction: float = _VAL, seed: int = _SEED):
    """Charades (multi-label) from the official CSVs and class list."""
    from featcache.data import converters

    _convert(out, root, converters.charades, train_csv, test_csv, classes, val_fraction, seed)


@manifest_app.command("folder", epilog="Examples:\n\n  featcache manifest folder my_videos --out mine.csv --val-fraction 0.1 --test-fraction 0.2\n\n"
                      "  featcache manifest folder UCF-101 --out ucf_groups.csv --group '_g(\\d+)_'   # a performer group in one split")
def manifest_folder(root: str = typer.Argument(..., help="Folder with <class>/<video> files."),
                    out: str = _OUT, val_fraction: float = _VAL,
                    test_fraction: float = typer.Option(0.2, help="Fraction for test."), seed: int = _SEED,
                    group: Optional[str] = typer.Option(None, "--group", help="A regular expression on file names whose "
                                                        "match (its first group, if any) names a group of clips of one "
                                                        "source, kept in one split (UCF101: '_g(\\d+)_').")):
    """A generic root/<class>/<video> folder tree with a deterministic, seeded train/val/test split
    (per video, or per group of clips with --group)."""
    from featcache.data import converters

    def grouped(*args):
        rows, notes = converters.folder(*args)
        if group is not None:
            from featcache.data.manifest import split_by_group

            rows, note = split_by_group(rows, group, val_fraction, test_fraction, seed)
            notes = [notes[0].split(";")[0] + "; " + note]
        return rows, notes

    grouped.__name__ = "folder"
    _convert(out, root, grouped, val_fraction, test_fraction, seed)


@manifest_app.command("check", epilog="Examples:\n\n  featcache manifest check ucf101_s1.csv\n\n"
                      "  featcache manifest check labels.csv --cache c.zarr   # labels and splits against a cache")
def manifest_check(path: str = typer.Argument(..., help="A manifest, or a training manifest (video_id,label,split)."),
                   cache: Optional[str] = typer.Option(None, "--cache", help="Also match the manifest's ids to this cache's videos."),
                   no_probe: bool = typer.Option(False, "--no-probe", help="Skip opening each video (existence only)."),
                   as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON.")):
    """Duplicate ids, missing and unreadable video files (each opened with PyAV: first frame, and
    its packets against the header's frame count), classes without training videos, label sets,
    class balance; with --cache, ids the cache lacks or holds unlisted. Exit 1 on any error."""
    from featcache.data.manifest import check_manifest

    with user_errors():
        facts, errors = check_manifest(path, check_video=None if no_probe else video_problem)
        if cache:
            match, more = _against_cache(path, cache)
            facts, errors = facts.replace(cache=match), errors + more
    if as_json:
        typer.echo(json.dumps({**facts.to_json(), "errors": errors}, indent=2))
    else:
        typer.echo(f"{path}: {facts.videos} videos {facts.per_split}; {facts.classes} classes "
                   f"{facts.classes_per_split}; multi-label: {facts.multi_label}; unlabelled: {facts.unlabelled}")
        if facts.annotated:
            typer.echo(f"train class balance: smallest {facts.smallest_classes}, largest {facts.largest_classes}")
        else:
            typer.echo("no labels or splits: a manifest to extract from; give them at training time (--manifest)")
        if not facts.paths:
            typer.echo("no paths: a training manifest (labels and splits)"
                       + ("; matched to the cache's videos" if cache else "; give --cache C.zarr to match it to a cache"))
        if facts.cache and facts.cache.note:
            typer.echo(f"note: {facts.cache.note}")
        for e in errors[:20]:
            typer.echo(f"error: {e}")
        if len(errors) > 20:
            typer.echo(f"... and {len(errors) - 20} more errors")
        typer.echo(f"check {'FAILED' if errors else 'ok'}: {len(errors)} error(s), {facts.missing_files} missing "
                   f"file(s), {facts.unreadable_files} unreadable, {facts.duplicate_ids} duplicate id(s)")
    if errors:
        raise typer.Exit(1)


def video_problem(path: str) -> Optional[str]:
    """Why PyAV cannot read the video at ``path`` as a whole (None: it can): no video stream, no
    first frame (random bytes, a 0-byte file), or fewer packets than the header promises frames
    (a file cut short: its header still says the full length). Packets are demuxed, not decoded."""
    import av

    from featcache.video.decode import DecodeError, check_file, expected_frames

    try:
        check_file(path)
        with av.open(path) as container:
            if not container.streams.video:
                return "no video stream"
            stream = container.streams.video[0]
            promised = int(stream.frames or 0) or expected_frames(container, stream) or 0
            if next(container.decode(stream), None) is None:
                return "no frame could be decoded"
        packets, damaged = 0, ""
        with av.open(path) as container:
            try:
                for packet in container.demux(container.streams.video[0]):
                    packets += bool(packet.size)
            except Exception as exc:  # noqa: BLE001 - damaged data part-way: what was read counts
                damaged = f"; damaged data after packet {packets} ({type(exc).__name__})"
    except DecodeError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - PyAV/FFmpeg errors of every kind: the file is unreadable
        return f"cannot be opened or decoded ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})"
    if promised and packets < 0.9 * promised:
        return f"truncated: the header promises ~{promised} frames, the file holds {packets}{damaged}"
    return f"damaged: {damaged[2:]}" if damaged else None


def _against_cache(path: str, cache_path: str):
    """A manifest matched to a cache: the counts (:class:`~featcache.data.manifest.CacheMatch`),
    with a note naming the cache's done videos it does not list, and the errors: its ids the
    cache does not hold done (or holds failed)."""
    from featcache.cache.store import open_cache
    from featcache.data.annotations import load_annotations
    from featcache.data.manifest import CacheMatch

    ann = load_annotations(open_cache(cache_path), path)
    few = lambda ids: ", ".join(ids[:5]) + (f", ... ({len(ids)})" if len(ids) > 5 else "")  # noqa: E731
    errors = []
    if ann.missing:
        errors.append(f"{len(ann.missing)} id(s) not cached (done) in {cache_path}: {few(ann.missing)}")
    # a subset (a class subset, another split) is a choice, not an error
    note = f"{len(ann.unlisted)} cached video(s) not in the manifest (not trained on): {few(ann.unlisted)}" \
        if ann.unlisted else None
    return CacheMatch(cache_path, len(ann.missing), len(ann.unlisted), len(ann.failed), note), errors
