"""Where the injection model's committed files are: named apart from the model's code, so
that a detector needing one of them (the poisoning scanner reads the tokenizer's words)
does not import the model's numerical stack."""

from __future__ import annotations

from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
ONNX_FILE = "minilm-l6-v2-int8.onnx"
TOKENIZER_FILE = "minilm-tokenizer.json"
CLASSIFIER_NPZ = "injection_classifier.npz"
CLASSIFIER_META = "injection_classifier.json"
RULES_FILE = "injection_rules.json"
