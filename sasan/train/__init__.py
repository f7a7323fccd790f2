"""Training (METHOD.md section 4): attention pre-training, joint adversarial training,
fake-source augmentation, detached segmenter; checkpointing and exact resume."""
