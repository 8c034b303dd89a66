"""Probe for recipe_cpu.md (issue 9): does a data-dependent whitening init of the first conv speed up a
5-epoch run? Not part of the recipe: it was worse (see recipe_cpu.md, third screening).

    OMP_NUM_THREADS=1 python results/benchmarks/recipe/recipe_whiten_probe.py OUT_DIR LR [DATA_DIR]

seed003_net on CIFAR-10 (45,000 train / 5,000 validation, seed 0), 5 epochs, batch 128, peak lr LR,
shift-scale-rotate and cutout off. Before training, the first conv's filters are set to the top
eigenvectors of the covariance of its input patches (k x k x 3, normalised images, 5,000 training images),
each scaled by 1 / sqrt(eigenvalue + 0.01), as airbench does for its (frozen) first layer; here the layer
stays trainable and a BN follows it. Prints the validation accuracy after each epoch.

The run quoted in recipe_cpu.md built the model before seeding, so its other layers' initial weights were
an unseeded draw; this version seeds first, so its figures differ from that run's (but repeat).
"""
import json
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from space import build, load_spec
from train.data import load_dataset, train_val_split
from train.engine import TrainConfig, train

out, lr = sys.argv[1], float(sys.argv[2])
data = train_val_split(load_dataset("cifar10", sys.argv[3] if len(sys.argv) > 3 else "/tmp/cifar10"), 5000, seed=0)
torch.manual_seed(0)  # train() seeds only the genomes it builds itself; this model is built here
model = build(load_spec("seed003_net"))
conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
idx = np.random.default_rng(0).choice(len(data.y_train), 5000, replace=False)
x = torch.tensor(data.x_train[idx]).permute(0, 3, 1, 2).float() / 255
mean = torch.tensor(np.asarray(data.mean, np.float32)).view(1, 3, 1, 1)
std = torch.tensor(np.asarray(data.std, np.float32)).view(1, 3, 1, 1)
k = conv.kernel_size[0]
patches = F.unfold((x - mean) / std, k, dilation=conv.dilation).transpose(1, 2).reshape(-1, 3 * k * k).double()
patches = patches - patches.mean(0)
eigval, eigvec = torch.linalg.eigh(patches.T @ patches / len(patches))
order = eigval.argsort(descending=True)
filters = (eigvec[:, order] / (eigval[order] + 1e-2).sqrt()).T.float()  # one filter per row, largest variance first
c = conv.out_channels
filters = torch.cat([filters, -filters])[:c] if c > len(filters) else filters[:c]
with torch.no_grad():
    conv.weight.copy_(filters.view(c, 3, k, k))
cfg = TrainConfig(epochs=5, batch_size=128, lr=lr, device="cpu", augment_start=0, augment_end=0, seed=0,
                  checkpoint=out + "/checkpoint.pt")
result = train(model, cfg, data)
print(json.dumps({"val_acc": [h.val_acc for h in result.history], "val_acc_tta": result.history[-1].val_acc_tta}))
