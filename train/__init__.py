"""Training: datasets, augmentation, device-side loading and the training engine."""
