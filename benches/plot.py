"""Plots for BENCHMARKS.md from benches/results.json."""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

results = json.load(open(sys.argv[1]))
out = sys.argv[2]

sched = results.get("sched") or []
if sched:
    fig, ax = plt.subplots(figsize=(9, 4))
    policies = sorted({r["policy"] for r in sched})
    nodes = sorted({r["nodes"] for r in sched})
    width = 0.8 / len(policies)
    for i, policy in enumerate(policies):
        ratios = [next((r["ratio"] for r in sched if r["nodes"] == n and r["policy"] == policy), 0) for n in nodes]
        ax.bar([x + i * width for x in range(len(nodes))], ratios, width, label=policy)
    ax.axhline(1.10, color="black", linestyle="--", linewidth=1, label="target 1.10")
    ax.set_xticks([x + width * (len(policies) - 1) / 2 for x in range(len(nodes))])
    ax.set_xticklabels([f"{n} nodes" for n in nodes])
    ax.set_ylabel("makespan / ideal")
    ax.set_title("Scheduling efficiency (lower is better)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(f"{out}/sched.png", dpi=110)

fairness = results.get("fairness") or []
if fairness:
    fig, ax = plt.subplots(figsize=(7, 4))
    for run in fairness:
        ax.scatter([run["users"]] * len(run["per_user_s"]), run["per_user_s"], color="tab:blue", s=14)
    ax.plot([r["users"] for r in fairness], [r["ideal_s"] for r in fairness], color="gray",
            linestyle="--", label="equal share of 12 slots")
    ax.set_xlabel("users building at once")
    ax.set_ylabel("seconds until the user's build ends")
    ax.set_title("Fairness: every user's time, against the number of users")
    ax.legend()
    fig.tight_layout()
    fig.savefig(f"{out}/fairness.png", dpi=110)
print("plots written to", out)
