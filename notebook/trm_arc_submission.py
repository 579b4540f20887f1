# %% [markdown]
# # Tiny Recursive Model: offline ARC Prize 2025 submission
#
# Post-trains a pre-trained Tiny Recursive Model (TRM) on the test tasks' demonstration pairs, votes over
# augmented predictions and writes `/kaggle/working/submission.json`. Internet off, 4×L4, 12 hours.
#
# **Attach** the competition data, the *wheels* dataset and the *checkpoint* dataset (or model), all built
# by `python build_notebook.py --dataset-dir DIR`. The folder names do not matter: they are found by content.
#
# Every cell is one call into `trm_kaggle.kaggle_env`. The same notebook runs locally against any challenges
# file: set `TRM_KAGGLE_CHALLENGES`, `TRM_KAGGLE_CHECKPOINT`, `TRM_KAGGLE_BUDGET` (e.g. `2m`) and `TRM_KAGGLE_OUT`.

# %%
RUN_HOURS = 12.0  # Kaggle's limit; on the hidden rerun the run gets this less a 30 min margin
CHECKPOINT_HANDLE = None  # e.g. "owner/trm-arc/pytorch/default/1" to try kagglehub first; None: the attached copy

# %% [markdown]
# ## 1. Import the package
# Straight from the attached wheel when it is not installed yet: a pure-Python wheel is a zip, which Python imports.

# %%
import glob, logging, os, sys  # noqa: E401

logging.basicConfig(level=logging.INFO, format="%(message)s")
try:
    from trm_kaggle import kaggle_env
except ImportError:
    _root = os.environ.get("TRM_KAGGLE_INPUT_ROOT", "/kaggle/input")
    sys.path.insert(0, sorted(glob.glob(f"{_root}/**/trm_kaggle-*.whl", recursive=True))[-1])
    from trm_kaggle import kaggle_env

# %% [markdown]
# ## 2. Where are we?
# The hidden-set rerun gets the full budget; the interactive commit a 15-minute rehearsal; a local run a few minutes.

# %%
env = kaggle_env.detect_environment()
BUDGET_S = kaggle_env.run_budget_seconds(env, full_hours=RUN_HOURS)
print(kaggle_env.describe(env), f"| run budget {BUDGET_S / 3600:.2f} h")

# %% [markdown]
# ## 3. Install offline
# `pip install --no-index` from the wheels dataset; what Kaggle already has (torch, numpy, …) is left alone.

# %%
with kaggle_env.stage(env, "install"):
    print("installed:", kaggle_env.ensure_installed(env) or "nothing needed")

# %% [markdown]
# ## 4. Locate the tasks
# A valid fallback submission is written at once, so there is one whatever happens next.

# %%
with kaggle_env.stage(env, "inputs"):
    challenges = kaggle_env.find_challenges(env)
    print(challenges, "|", kaggle_env.ensure_valid_submission(env.out_dir / "submission.json", challenges))

# %% [markdown]
# ## 5. Resolve the checkpoint
# kagglehub first when a handle is set (it can fail during the rerun), then the attached copy.

# %%
with kaggle_env.stage(env, "checkpoint"):
    checkpoint = kaggle_env.find_checkpoint(env, handle=CHECKPOINT_HANDLE)
    print(checkpoint)

# %% [markdown]
# ## 6. Post-train, vote, write the submission
# `trm-kaggle run` on every visible GPU (torchrun; one process on CPU), its progress streamed here.
# It is stopped if it outlives its budget by more than a few minutes.

# %%
with kaggle_env.stage(env, "run"):
    command = kaggle_env.launch_command(env, checkpoint, challenges, env.out_dir, BUDGET_S)
    exit_code = kaggle_env.stream(command, timeout_s=BUDGET_S + kaggle_env.KILL_GRACE_S)

# %% [markdown]
# ## 7. Report
# What the run did with its time: the headline numbers from `report.json` and the timeline plot.

# %%
with kaggle_env.stage(env, "report"):
    kaggle_env.show_results(env.out_dir)

# %% [markdown]
# ## 8. Check the submission
# Validates `submission.json` and, if the run died or wrote something wrong, repairs it: every good entry is
# kept, the rest come from the fallback.

# %%
print(kaggle_env.ensure_valid_submission(env.out_dir / "submission.json", kaggle_env.find_challenges(env)))
