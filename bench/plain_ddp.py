"""The cpu-profile training written as a plain, minimal DDP script — the way a user
would without labkit. `labkit bench harness` runs it against `labkit run --strategy ddp`
(same model, data, batch, steps) to check that labkit does not slow training down.

    python -m torch.distributed.run --standalone --nproc-per-node 4 bench/plain_ddp.py DATA_DIR STEPS WARMUP

Prints one line: `throughput_img_s <value>`, measured as labkit measures it: global batch
× measured steps ÷ their time, the first WARMUP steps left out.
"""

import os
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
import torchvision
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from torchvision import datasets, transforms

data_dir, steps, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
batch_size, lr = 16, 0.02
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.set_num_threads(max(1, os.cpu_count() // world))
torch.manual_seed(0)

model = torchvision.models.resnet18(num_classes=10)
model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)  # 32 px stem
model = DistributedDataParallel(model)
optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
normalize = transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
train_set = datasets.ImageFolder(os.path.join(data_dir, "train"), transforms.Compose(
    [transforms.Resize(32), transforms.RandomCrop(32, padding=4), transforms.ToTensor(), normalize]))
sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=0)
loader = DataLoader(train_set, batch_size, sampler=sampler, drop_last=True)

done, epoch = 0, 0
while done < steps:
    sampler.set_epoch(epoch)
    for images, labels in loader:
        if done == warmup:
            start = time.perf_counter()
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()  # labkit logs the loss each step; so does any training script worth its name
        done += 1
        if done == steps:
            break
    epoch += 1
elapsed = time.perf_counter() - start
if rank == 0:
    print(f"throughput_img_s {batch_size * world * (steps - warmup) / elapsed:.3f}", flush=True)
dist.destroy_process_group()
