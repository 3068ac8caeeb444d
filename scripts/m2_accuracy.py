"""M2 vs logistic regression on the same labelled digits (50 and 100 labels).

    python scripts/m2_accuracy.py OUT      # trains models/m2.toml twice into OUT/m2-50, OUT/m2-100

Each run keeps ``num_labelled`` training labels (M2's own random subset); a logistic
regression is fitted on those labelled grey-level images alone; both classify the test set.
"""
import sys

import torch
from sklearn.linear_model import LogisticRegression

import ppl_vae
from ppl_vae.build import build
from ppl_vae.config import load_config

torch.set_num_threads(1)
out = sys.argv[1]
for n in (50, 100):
    options = {"num_labelled": n, "alpha": 50.0, "hidden": [256, 256]}
    run_dir = f"{out}/m2-{n}"
    build(load_config("m2", {"model.program_options": options}), run_dir, progress=False).run()
    run = ppl_vae.load_run(run_dir, device="cpu")
    data = run.dataset  # grey-level images, labels as loaded (digits: 0..9 = class indices)
    labelled = run.program.labelled.nonzero().flatten()
    x_l, y_l = data.x_train[labelled], data.y_train[labelled]
    lr = LogisticRegression(max_iter=5000).fit(x_l.numpy(), y_l.numpy())
    acc_lr = lr.score(data.x_test.numpy(), data.y_test.numpy())
    acc_m2 = float((run.program.classify(data.x_test) == data.y_test).float().mean())
    print(f"{n} labels ({len(set(y_l.tolist()))} classes among them): M2 {acc_m2:.4f}, "
          f"logistic regression {acc_lr:.4f}, test ELBO {run.metrics[-1]['test_elbo']:.2f}",
          flush=True)
