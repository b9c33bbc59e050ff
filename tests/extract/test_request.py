"""ExtractRequest (what was asked) -> ExtractPlan (resolved once against the store and device)."""
import ast
import dataclasses
import inspect
import textwrap

import pytest
from conftest import TINY_CLI, tiny_encoder_config, write_manifest
from typer.testing import CliRunner

from featcache.cli import app
from featcache.extract import pipeline
from featcache.extract.request import AUTO, VIDEO_BATCH, ExtractPlan, ExtractRequest, resolve_plan, validate
from featcache.spec.policy import parse_policies


def test_run_extract_never_rebinds_the_request():
    """The request is frozen and run_extract resolves it once: no dataclasses.replace, no rebinding of cfg."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(pipeline.run_extract)))
    replaced = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "replace"]
    rebound = [n for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == "cfg" and isinstance(n.ctx, ast.Store)]
    assert replaced == [] and rebound == []
    with pytest.raises(dataclasses.FrozenInstanceError):
        ExtractRequest(manifest="m.csv", out="o.zarr").batch_size = 8  # type: ignore[misc]


def test_one_auto_sentinel():
    """batch size and decode workers say AUTO the same way; -1 is no longer a spelling of it."""
    ok = ExtractRequest(manifest="m.csv", out="o.zarr", encoder=tiny_encoder_config(), batch_size=AUTO,
                        decode_workers=AUTO)
    validate(ok)
    for field, bad in (("decode_workers", -1), ("batch_size", -1), ("batch_size", "full")):
        with pytest.raises(Exception, match="expected auto or an integer"):
            validate(dataclasses.replace(ok, **{field: bad}))


class _NoProbe:
    def __getattr__(self, name):
        raise AssertionError("the encoder is not probed here")


def test_resolve_plan_takes_the_stores_policies_and_keeps_the_request():
    req = ExtractRequest(manifest="m.csv", out="o.zarr", frames="uniform:4", batch_size=8, decode_workers=AUTO)
    plan = resolve_plan(req, _NoProbe(), ("uniform:4", "keyframes:2"), 3, has_work=True)
    assert plan == ExtractPlan(req, parse_policies("uniform:4,keyframes:2"), 8, 3)
    assert [str(p) for p in plan.policies] == ["uniform:4", "keyframes:2"]
    assert req.frames == "uniform:4" and req.decode_workers == AUTO  # the request stays as asked


def test_resolve_plan_auto_batch():
    video = ExtractRequest(manifest="m.csv", out="o.zarr", frames="clips:2", batch_size=AUTO,
                           encoder=tiny_encoder_config(model="tv:r3d_18"))
    plan = resolve_plan(video, _NoProbe(), ("clips:2",), 0, has_work=True)
    assert plan.batch_size == VIDEO_BATCH and plan.probe is None
    assert plan.batch_size_note == f"batch size {VIDEO_BATCH} clips (auto is not probed for video encoders)"
    image = ExtractRequest(manifest="m.csv", out="o.zarr", batch_size=AUTO)
    idle = resolve_plan(image, _NoProbe(), ("uniform:16",), 0, has_work=False)  # nothing to extract: no probe
    assert (idle.batch_size, idle.batch_size_note) == (32, "batch size 32 (auto: nothing to extract)")


def test_run_extract_runs_one_plan(videos, tmp_path, monkeypatch):
    """A resumed store with a policy added earlier: the pipeline gets the store's policies and the
    resolved sizes in one plan; the request it was given is unchanged."""
    manifest = write_manifest(tmp_path / "m.csv", [{"video_id": "a", "path": videos[".mp4"]}])
    out = str(tmp_path / "c.zarr")
    first = ExtractRequest(manifest=manifest, out=out, encoder=tiny_encoder_config(), frames="uniform:4,keyframes:2",
                           dtype="float32")
    assert pipeline.run_extract(first, show_progress=False).done == 1
    plans = []
    real = pipeline._Pipeline

    def spy(plan, *args):
        plans.append(plan)
        return real(plan, *args)

    monkeypatch.setattr(pipeline, "_Pipeline", spy)
    again = dataclasses.replace(first, frames="uniform:4", batch_size=5, decode_workers=0)
    assert pipeline.run_extract(again, show_progress=False).skipped == 1
    (plan,) = plans
    assert plan.request is again and again.frames == "uniform:4"
    assert [str(p) for p in plan.policies] == ["uniform:4", "keyframes:2"]
    assert (plan.batch_size, plan.decode_workers) == (5, 0)


@pytest.mark.parametrize("options", [
    [],
    ["--frames", "uniform:4,keyframes:2", "--batch-size", "16", "--decode-workers", "2", "--layers", "-2,-1",
     "--token-pool", "mean", "--luv-size", "full", "--dtype", "int8", "--shard", "1/3", "--stream", "0"],
])
def test_cli_and_estimate_build_the_same_request(options, tmp_path, monkeypatch):
    """`extract` and `estimate` share the builder: the same options give the same request."""
    import featcache.extract.estimate as estimate_module

    seen = {}

    def capture(name):
        def stop(cfg, **_):  # the request as built; nothing runs
            seen[name] = cfg
            raise SystemExit(0)
        return stop

    monkeypatch.setattr(pipeline, "run_extract", capture("extract"))
    monkeypatch.setattr(estimate_module, "estimate", capture("estimate"))
    runner = CliRunner()
    runner.invoke(app, ["extract", "m.csv", "--out", "estimate.zarr", *TINY_CLI, *options])
    runner.invoke(app, ["estimate", "m.csv", *TINY_CLI, *options])
    assert isinstance(seen["extract"], ExtractRequest)
    assert seen["extract"] == seen["estimate"]
    if options:
        req = seen["extract"]
        assert (req.batch_size, req.decode_workers, req.luv_size, req.shard) == (16, 2, "full", (1, 3))
    else:
        assert (seen["extract"].batch_size, seen["extract"].decode_workers) == (AUTO, AUTO)
