"""labkit's training written as a plain, minimal DDP script — the way a user would without
labkit. `labkit bench harness` runs it against labkit's DDP (same model, data, batch, steps)
to check that labkit does not slow training down.

    python -m torch.distributed.run --standalone --nproc-per-node 4 bench/plain_ddp.py DATA_DIR STEPS TIMING_WARMUP
    python -m torch.distributed.run --standalone --nproc-per-node 4 bench/plain_ddp.py synthetic STEPS TIMING_WARMUP [AMP [CHANNELS_LAST]]

DATA_DIR: the cpu profile (ResNet-18 with a 32 px stem, the tiny set, batch 16 per rank, gloo).
`synthetic`: the synthetic profile on GPUs (ResNet-50, a random 224 px batch of 64 drawn on the
GPU each step, NCCL; AMP off / bf16 / fp16, CHANNELS_LAST true / false).

Prints one line: `throughput_img_s <value>`, measured as labkit measures it: global batch
× measured steps ÷ their time, the first TIMING_WARMUP steps left out.
"""

import os
import sys
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn.functional as F
import torchvision
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from torchvision import datasets, transforms

data_dir, steps, timing_warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
amp, channels_last = (sys.argv[4:5] or ["off"])[0], (sys.argv[5:6] or ["false"])[0] == "true"
gpu = data_dir == "synthetic"
dist.init_process_group("nccl" if gpu else "gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)

if gpu:
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    torch.cuda.set_device(device)
    torch.backends.cudnn.benchmark = True
    batch_size, lr = 64, 0.1 * 64 * world / 256
    model = torchvision.models.resnet50(num_classes=1000).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = DistributedDataParallel(model, device_ids=[device])

    def batches():
        layout = torch.channels_last if channels_last else torch.contiguous_format
        while True:
            yield (torch.randn(batch_size, 3, 224, 224, device=device).contiguous(memory_format=layout),
                   torch.randint(0, 1000, (batch_size,), device=device))
else:
    torch.set_num_threads(max(1, os.cpu_count() // world))
    batch_size, lr = 16, 0.02
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)  # 32 px stem
    model = DistributedDataParallel(model)
    normalize = transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    train_set = datasets.ImageFolder(os.path.join(data_dir, "train"), transforms.Compose(
        [transforms.Resize(32), transforms.RandomCrop(32, padding=4), transforms.ToTensor(), normalize]))
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(train_set, batch_size, sampler=sampler, drop_last=True)

    def batches():
        epoch = 0
        while True:
            sampler.set_epoch(epoch)
            yield from loader
            epoch += 1

optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
scaler = torch.amp.GradScaler("cuda" if gpu else "cpu", enabled=amp == "fp16")
autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)) \
    if amp != "off" else nullcontext

for step, (images, labels) in enumerate(batches()):
    if step == timing_warmup:
        start = time.perf_counter()
    with autocast():
        loss = F.cross_entropy(model(images), labels)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    loss.item()  # labkit logs the loss each step (a host-device sync on GPU); so does any training script worth its name
    if step + 1 == steps:
        break
elapsed = time.perf_counter() - start
if rank == 0:
    print(f"throughput_img_s {batch_size * world * (steps - timing_warmup) / elapsed:.3f}", flush=True)
dist.destroy_process_group()
