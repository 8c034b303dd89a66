import os

# albumentations otherwise asks the network for updates on import.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
