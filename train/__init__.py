"""Training: datasets, augmentation, device-side loading and the training engine."""
import os

# albumentations asks the network for a newer version when it is imported, unless this is set; every import
# of it goes through this package (train.augment), so setting it here covers them all. A user's own value wins.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
