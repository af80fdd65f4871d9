"""How fast do MAP and BbH learn LeNet-5 on real MNIST in their first steps? (a reproduction check)

    python benchmarks/mnist_first_steps.py --method bbh --steps 300 [--optimizer adam] [--lr 1e-4]
                                           [--init hyperfan] [--data-dir ../shared/data/mnist]

Trains ``--steps`` minibatches of 100 from the first 55,000 training images (the authors' N), with the
paper's KL annealing (0 for 5 epochs, then a 15-epoch ramp: within the first 2,750 steps the KL weight is
0), and prints the mean training NLL of the run and the test accuracy of the posterior predictive (10
samples for BbH). Needs the MNIST IDX files (``train-images-idx3-ubyte.gz`` ...) in ``--data-dir``; the
library's data pipeline comes with its own issue, this script reads the files directly.
"""

from __future__ import annotations

import argparse
import gzip
import sys
import time
from pathlib import Path

import numpy as np
import torch

import bbh

FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
         "t10k-labels-idx1-ubyte.gz")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip) as a uint8 array."""
    with gzip.open(path) as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {array.size} values")
    return array.reshape(shape)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=["map", "bbh"], default="bbh")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--optimizer", choices=["adam", "rmsprop-tf"], default="adam")
    parser.add_argument("--lr", type=float, default=None, help="default: the method's (BbH 1e-4, MAP 1e-3)")
    parser.add_argument("--init", choices=["hyperfan", "glorot"], default="hyperfan")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/mnist")
    args = parser.parse_args()
    missing = [f for f in FILES if not (args.data_dir / f).is_file()]
    if missing:
        print(f"missing MNIST files in {args.data_dir}: {', '.join(missing)}", file=sys.stderr)
        return 2
    images = [torch.tensor(read_idx(args.data_dir / f), dtype=torch.float32).view(-1, 784) / 255 for f in FILES[::2]]
    labels = [torch.tensor(read_idx(args.data_dir / f)).long() for f in FILES[1::2]]
    x, y, xt, yt = images[0][:55_000], labels[0][:55_000], images[1], labels[1]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=100, shuffle=True)
    torch.manual_seed(args.seed)
    options = {} if args.method == "map" else {"init": args.init}
    method = bbh.create(args.method, bbh.models.LeNet5(), **options)
    trainer = bbh.Trainer(method, optimizer=args.optimizer, lr=args.lr, steps=args.steps,
                          kl_anneal=bbh.LinearAnneal(5, 15), progress=True)
    start = time.perf_counter()
    history = trainer.fit(loader, num_data=55_000)
    seconds = time.perf_counter() - start
    method.eval()
    n_samples = 1 if args.method == "map" else 10
    with torch.no_grad():
        probs = torch.cat([method.sample_outputs(xt[i:i + 1000], n_samples).softmax(-1).mean(0)
                           for i in range(0, len(xt), 1000)])
    accuracy = float((probs.argmax(-1) == yt).float().mean())
    lr = trainer.optimizer.param_groups[0]["lr"]
    print(f"{args.method} {args.optimizer} lr={lr:g} init={args.init} steps={args.steps}: "
          f"mean train NLL {history[-1]['nll']:.3f}, test accuracy {accuracy:.4f}, {seconds:.0f} s training")
    return 0


if __name__ == "__main__":
    sys.exit(main())
