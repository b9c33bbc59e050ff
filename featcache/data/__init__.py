"""Inputs: manifests, annotations (labels and splits apart from features), dataset converters, synthetic videos."""
