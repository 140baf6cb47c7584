"""Peak memory and wall time of one user problem held in memory vs streamed from disk.

Writes ``--n`` synthetic 3x32x32 uint8 images (a CIFAR-sized set; labels from a fixed random
linear map, so there is something to learn) to one ``.npy`` file, then trains the same small CNN
for ``--epochs`` epochs of Adam on it twice, each in a fresh process, one after the other:

- ``in_memory``: the images loaded and converted to float32 tensors (as the built-in problems
  hold their data), then ``bs.Problem(..., train=(x, y), ...)``;
- ``streamed``: a ``Dataset`` reading each image from the memory-mapped file on access,
  served by a ``DataLoader`` (``num_workers`` as given).

Prints each run's peak resident memory (``ru_maxrss``; for the streamed run it includes the
memory-mapped file's pages, which the kernel can drop, so the anonymous and file-backed memory
at the end are shown too), wall and CPU seconds of the trial, and the final test accuracy
(identical for both: same minibatch order), with the load average::

    python benchmarks/streamed_memory.py --n 20000 --epochs 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np

CHILD = textwrap.dedent(r'''
    import json, re, resource, sys, time
    import numpy as np, torch
    from torch import nn
    from torch.utils.data import Dataset
    import beyondsgd as bs
    from beyondsgd.bench.run.runner import run_trial

    path, mode, epochs, workers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(1)
    labels = np.load(path.replace(".npy", "_y.npy"))
    n = len(labels)
    cut = [int(n * 0.8), int(n * 0.9)]

    class Images(Dataset):
        def __init__(self, lo, hi):
            self.lo, self.hi, self.x = lo, hi, None
        def __len__(self):
            return self.hi - self.lo
        def __getitem__(self, i):
            if self.x is None:  # opened lazily: each DataLoader worker maps the file itself
                self.x = np.load(path, mmap_mode="r")
            img = torch.from_numpy(np.array(self.x[self.lo + i], dtype=np.float32)) / 255.0
            return img, int(labels[self.lo + i])

    def cnn(seed):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 3,
                             stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 7 * 7, 10))

    spans = [(0, cut[0]), (cut[0], cut[1]), (cut[1], n)]
    if mode == "in_memory":
        x = torch.from_numpy(np.load(path).astype(np.float32) / 255.0)
        y = torch.from_numpy(labels).long()
        splits = [(x[a:b], y[a:b]) for a, b in spans]
    else:
        splits = [Images(a, b) for a, b in spans]
    p = bs.Problem("mem_" + mode, cnn, *splits, batch_size=128, epochs=epochs,
                   num_workers=workers)
    t0, c0 = time.perf_counter(), time.process_time()
    res = run_trial(p, "adam", seed=0)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    status = open("/proc/self/status").read()
    rss = {k: int(v) / 1024 for k, v in re.findall(r"(RssAnon|RssFile):\s+(\d+)", status)}
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"mode": mode, "peak_mib": peak, "worker_peak_mib": kids, **rss,
                      "wall_s": wall,
                      "cpu_s": cpu, "train_s": res.evals[-1]["train_seconds"],
                      "test_acc": res.evals[-1]["test_metric"]}))
''')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="images (3x32x32 uint8)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers (streamed)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "images.npy")
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, size=(args.n, 3, 32, 32), dtype=np.uint8)
        w = rng.standard_normal((3 * 32 * 32, 10)).astype(np.float32)
        y = (x.reshape(args.n, -1).astype(np.float32) @ w).argmax(1)
        np.save(path, x)
        np.save(path.replace(".npy", "_y.npy"), y)
        del x
        size = os.path.getsize(path) / 2**20
        print(f"{args.n} images 3x32x32 uint8: {size:.0f} MiB on disk, "
              f"{size * 4:.0f} MiB as float32; {args.epochs} epoch(s) of Adam, batch 128, "
              f"1 torch thread; load average {os.getloadavg()[0]:.2f}")
        script = os.path.join(tmp, "child.py")
        with open(script, "w") as f:
            f.write(CHILD)
        out = []
        for mode in ("in_memory", "streamed"):
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, script, path, mode, str(args.epochs),
                                str(args.workers)], capture_output=True, text=True, check=True)
            row = json.loads(r.stdout.strip().splitlines()[-1])
            row["process_s"] = time.perf_counter() - t0
            out.append(row)
            print(f"  {mode:9s}  peak RSS {row['peak_mib']:6.0f} MiB (at the end: anonymous "
                  f"{row.get('RssAnon', 0):.0f}, file-backed {row.get('RssFile', 0):.0f})  "
                  f"trial wall {row['wall_s']:5.1f} s (train {row['train_s']:.1f} s, CPU "
                  f"{row['cpu_s']:.1f} s)  test accuracy {row['test_acc']:.4f}")
        a, b = out
        print(f"streamed / in-memory: peak memory {b['peak_mib'] / a['peak_mib']:.2f}x, trial "
              f"wall {b['wall_s'] / a['wall_s']:.2f}x; same accuracy: "
              f"{a['test_acc'] == b['test_acc']}; load average after "
              f"{os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
