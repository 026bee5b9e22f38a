"""How many training epochs fit a time budget, from the N-FGSM step rate measured by preflight.py.

    python3 scripts/device/plan_epochs.py /tmp/preflight.json BUDGET_SECONDS [TRAIN_IMAGES]
prints the number of epochs after a 1-epoch warm-up (at least 1).
"""

import json
import sys

report = json.load(open(sys.argv[1]))
budget = float(sys.argv[2])
images = int(sys.argv[3]) if len(sys.argv) > 3 else 49_000
rate = report.get("nfgsm_train_step_images_per_s_bf16") or report.get("nfgsm_train_step_images_per_s_fp32")
if not rate:
    print(4)
    sys.exit(0)
epoch_seconds = images / rate * 1.15 + 4.0  # loader, per-epoch PGD-10 validation on 1,000 images, checkpoints
after_warmup = max(1, min(40, int(budget // epoch_seconds) - 1))
print(after_warmup)
print(f"plan: {rate:.0f} training images/s -> {epoch_seconds:.1f} s per epoch -> 1 warm-up + {after_warmup} epochs "
      f"for {budget:.0f} s", file=sys.stderr)
