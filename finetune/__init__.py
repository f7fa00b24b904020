"""Evaluate an exported eofm encoder on a labelled task: linear probe and end-to-end fine-tuning.

  eofm-finetune configs/finetune/quickstart.yaml [key=value ...]

Public API: `run(cfg)` (finetune.train), `load_task` (finetune.data), `load_backbone`
(finetune.backbone), `LABELS` (finetune.labels), `classification_metrics` (finetune.metrics).
"""

__version__ = "0.1.0"


class FinetuneError(ValueError):
    """Bad input to fine-tuning (export, dataset, split); the message says what and where."""
