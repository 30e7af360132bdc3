"""A sweep (datasets x seeds x methods [x shots]) as a list of independent protocol-script runs, run on the local
GPUs (one run per GPU at a time), on the CPU, or submitted as a Slurm job array through submitit.

    python tools/sweep.py --protocol base2new --trainers CoOp MaPLe BMIP --datasets oxford_pets eurosat \\
        --seeds 1 2 3 --root DATA [--output output] [--gpus 0,1 | --cpu [--jobs N] | --slurm --partition P] \\
        [--config TRAINER=CFG | TRAINER@DATASET=CFG ...] [--write-list runs.txt] [--dry-run] [--table open_world] \\
        [KEY VALUE ...]

Each run is one `bash scripts/<protocol>.sh TRAINER CFG DATASET SEED SHOTS [KEY VALUE ...]` command line with
DATA, OUTPUT and PYTHON set; the scripts skip what is done and resume what was interrupted, so a sweep can be
started again after a failure. Trailing KEY VALUE pairs (from the first argument that looks like a config key,
or after `--`) go to every run. Cross-dataset and domain-generalization sweeps run the source (ImageNet)
trainings first, then the evaluations (on Slurm: a second array that waits for the first).
See docs/protocols.md.
"""
import argparse
import os
import queue
import re
import shlex
import subprocess
import sys
import threading
import time

TOOLS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TOOLS)
sys.path.insert(0, TOOLS)

from parse_results import DATASET_ORDER, DG_TARGETS  # noqa: E402

PROTOCOLS = ["base2new", "cross_dataset", "domain_generalization", "few_shot"]
# The official config of each method per protocol; TRAINER@DATASET entries override it for one dataset.
BASE = {
    "ZeroshotCLIP": "vit_b16",  # configs/trainers/CoOp/vit_b16.yaml, as the official zeroshot.sh
    "ZeroshotCLIP2": "vit_b16",
    "CoOp": "vit_b16_ep50_ctxv1",
    "CoCoOp": "vit_b16_c4_ep10_batch1_ctxv1",
    "VPT": "vit_b16_c2_ep5_batch4_4",
    "IVLP": "vit_b16_c2_ep5_batch4_2+2ctx",
    "MaPLe": "vit_b16_c2_ep5_batch4_2ctx",
    "BMIP": "BMIP_ctx2_dp9_lr2",
    "HiCroPL": "vit_b16_c2_ep50_batch32_16ctx",
    "PromptSRC": "vit_b16_c2_ep20_batch4_4+4ctx",
    "PromptSRC_BMIP": "vit_bitp_ctx4_ep20TT_adam_PromptSRC",
    "CoPrompt": "coprompt",
    "CoPrompt_BMIP": "coprompt",  # configs/trainers/CoPrompt/coprompt.yaml
}
TRANSFER = dict(BASE, MaPLe="vit_b16_c2_ep5_batch4_2ctx_cross_datasets",
                HiCroPL="vit_b16_c2_ep5_batch32_2ctx_cross_datasets",
                PromptSRC="vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets")
DEFAULT_CONFIGS = {
    "base2new": dict(BASE, **{"HiCroPL@imagenet": "vit_b16_c2_ep40_batch128_16ctx"}),
    "cross_dataset": TRANSFER,
    "domain_generalization": TRANSFER,
    "few_shot": dict(BASE, HiCroPL="vit_b16_c2_ep50_batch32_16ctx_few_shot",
                     PromptSRC="vit_b16_c2_ep50_batch4_4+4ctx_few_shot"),
}
DEFAULT_DATASETS = {
    "base2new": DATASET_ORDER,
    "few_shot": DATASET_ORDER,
    "cross_dataset": DATASET_ORDER,  # imagenet (the source) and the 10 targets
    "domain_generalization": ["imagenet"] + DG_TARGETS,
}
KEY_RE = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


def config_file(trainer, name=None):
    """The path of a trainer's config NAME (default: its base-to-new config), as the scripts resolve it;
    zero-shot trainers read CoOp's configs, as the official zeroshot.sh."""
    folder = "CoOp" if trainer.startswith("ZeroshotCLIP") else trainer
    path = os.path.join(REPO, "configs", "trainers", folder, (name or BASE[trainer]) + ".yaml")
    if not os.path.isfile(path) and trainer.endswith("_BMIP"):  # CoPrompt_BMIP reads CoPrompt's configs
        path = os.path.join(REPO, "configs", "trainers", trainer[:-len("_BMIP")], (name or BASE[trainer]) + ".yaml")
    return path


def split_opts(argv):
    """argv -> (sweep arguments, KEY VALUE options): the options start at `--` or at the first config key."""
    for i, a in enumerate(argv):
        if a == "--":
            return argv[:i], argv[i + 1:]
        if KEY_RE.match(a):
            return argv[:i], argv[i:]
    return argv, []


def config_for(configs, trainer, dataset):
    cfg = configs.get(f"{trainer}@{dataset}") or configs.get(trainer)
    if not cfg:
        raise SystemExit(f"error: no config for {trainer}: pass --config {trainer}=CONFIG_NAME")
    return cfg


def make_runs(protocol, trainers, datasets, seeds, shots, configs, opts, source="imagenet"):
    """The runs of a sweep: dicts with the script's arguments and a stage (0 first; a transfer sweep's source
    trainings are stage 0, their evaluations stage 1)."""
    runs = []
    transfer = protocol in ("cross_dataset", "domain_generalization")
    if transfer and source not in datasets:
        datasets = [source] + list(datasets)
    for trainer in trainers:
        for dataset in datasets:
            for s in shots:
                for seed in seeds:
                    cfg = config_for(configs, trainer, source if transfer else dataset)
                    runs.append(dict(protocol=protocol, trainer=trainer, cfg=cfg, dataset=dataset, seed=seed,
                                     shots=s, opts=list(opts), stage=1 if transfer and dataset != source else 0))
    runs.sort(key=lambda r: r["stage"])  # stable: the order above within a stage
    return runs


def command(run):
    return ["bash", os.path.join("scripts", f"{run['protocol']}.sh"), run["trainer"], run["cfg"], run["dataset"],
            str(run["seed"]), str(run["shots"]), *run["opts"]]


def run_name(run):
    return (f"{run['protocol']}_{run['dataset']}_{run['trainer']}_{os.path.basename(run['cfg'])}_"
            f"{run['shots']}shots_seed{run['seed']}")


def command_line(run, env):
    """The run as one shell line, runnable from the repository root."""
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    return f"{prefix} {shlex.join(command(run))}"


def write_list(path, runs, env):
    with open(path, "w") as f:
        f.write(f"# {len(runs)} runs; run each line from {REPO}\n")
        stage = None
        for run in runs:
            if run["stage"] != stage:
                stage = run["stage"]
                f.write(f"# stage {stage}" + (" (after stage 0 has finished)\n" if stage else "\n"))
            f.write(command_line(run, env) + "\n")


def execute(cmd, env, log_path=None, cwd=REPO, echo=False):
    """Run one command (the function a Slurm job runs, too); returns its exit status."""
    full_env = dict(os.environ, **env)
    if log_path is None:
        return subprocess.run(cmd, cwd=cwd, env=full_env).returncode
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)
        for line in proc.stdout:
            log.write(line)
            if echo:
                sys.stdout.write(line)
        return proc.wait()


def slurm_job(cmd, env):
    """Runs on a Slurm node: one command, output to the job's own log; fails the job on a non-zero status."""
    status = execute(cmd, env)
    if status != 0:
        raise RuntimeError(f"exit status {status}: {shlex.join(cmd)}")
    return status


def detect_gpus():
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no torch or no driver: the CPU
        return []


def run_local(runs, env, slots, log_dir, verbose=False):
    """Each slot (a GPU id, or None for the CPU) runs one command at a time; stages run one after another.
    Returns the failed runs."""
    failed, lock = [], threading.Lock()
    total, counter = len(runs), [0]
    start_all = time.time()
    for stage in sorted({r["stage"] for r in runs}):
        todo = queue.Queue()
        for r in runs:
            if r["stage"] == stage:
                todo.put(r)

        def worker(slot):
            while True:
                try:
                    r = todo.get_nowait()
                except queue.Empty:
                    return
                run_env = dict(env, CUDA_VISIBLE_DEVICES="" if slot is None else slot)
                log = os.path.join(log_dir, run_name(r) + ".log")
                with lock:
                    counter[0] += 1
                    n = counter[0]
                    where = "cpu" if slot is None else f"gpu {slot}"
                    print(f"[{n}/{total}] {where}: {shlex.join(command(r)[1:])}", flush=True)
                t = time.time()
                status = execute(command(r), run_env, log, echo=verbose)
                with lock:
                    if status != 0:
                        failed.append((r, log))
                        print(f"[{n}/{total}] FAILED (exit {status}) after {time.time() - t:.0f} s; log: {log}",
                              flush=True)
                    elif verbose:
                        print(f"[{n}/{total}] done in {time.time() - t:.0f} s", flush=True)

        threads = [threading.Thread(target=worker, args=(slot,)) for slot in slots]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    print(f"{total - len(failed)} of {total} runs done in {time.time() - start_all:.0f} s"
          f"{'' if not failed else f'; {len(failed)} failed'} (logs: {log_dir})", flush=True)
    for r, log in failed:
        print(f"  failed: {shlex.join(command(r)[1:])}  (log: {log})")
    return failed


def submit_slurm(runs, env, args):
    try:
        import submitit
    except ImportError:
        raise SystemExit("error: --slurm needs submitit: pip install submitit (or pip install -e '.[sweep]')")
    folder = os.path.abspath(args.slurm_folder or os.path.join(env["OUTPUT"], "slurm"))
    executor = submitit.AutoExecutor(folder=os.path.join(folder, "%j"))
    params = dict(name=f"vlprompt-{args.protocol}", timeout_min=args.timeout_min, gpus_per_node=args.gpus_per_job,
                  cpus_per_task=args.cpus_per_task, tasks_per_node=1, nodes=1)
    if args.mem_gb:
        params["mem_gb"] = args.mem_gb
    if args.partition:
        params["slurm_partition"] = args.partition
    if args.array_parallelism:
        params["slurm_array_parallelism"] = args.array_parallelism
    extra = dict(kv.split("=", 1) for kv in args.slurm_extra)
    all_jobs, previous = [], None
    for stage in sorted({r["stage"] for r in runs}):
        stage_runs = [r for r in runs if r["stage"] == stage]
        stage_extra = dict(extra)
        if previous:
            stage_extra["dependency"] = f"afterany:{previous}"  # a failed source is retried by its targets
        executor.update_parameters(**params, slurm_additional_parameters=stage_extra)
        jobs = executor.map_array(slurm_job, [command(r) for r in stage_runs], [env] * len(stage_runs))
        if jobs:
            previous = str(jobs[0].job_id).split("_")[0]
            print(f"stage {stage}: submitted {len(jobs)} runs as job array {previous} (logs: {folder})")
        all_jobs += list(zip(stage_runs, jobs))
    if args.wait:
        failed = []
        for r, job in all_jobs:
            try:
                job.result()
            except Exception as e:  # noqa: BLE001 - report every failure, then the summary
                failed.append(r)
                print(f"  failed: {shlex.join(command(r)[1:])}: {str(e).splitlines()[0] if str(e) else e}")
        print(f"{len(all_jobs) - len(failed)} of {len(all_jobs)} runs done")
        return failed
    return []


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="See docs/protocols.md.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", required=True, choices=PROTOCOLS)
    p.add_argument("--trainers", nargs="+", required=True)
    p.add_argument("--datasets", nargs="+", help="default: the protocol's benchmarks (the 11; cross-dataset: ImageNet "
                                                 "and the 10 others; domain generalization: ImageNet and its 4 variants)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--shots", type=int, nargs="+", help="default: 1 2 4 8 16 for few_shot, else 16")
    p.add_argument("--config", nargs="+", default=[], metavar="TRAINER[@DATASET]=CFG",
                   help="config names (configs/trainers/TRAINER/CFG.yaml, or a path) replacing the defaults")
    p.add_argument("--source", default="imagenet", help="training dataset of cross-dataset / DG sweeps")
    p.add_argument("--root", default=os.environ.get("DATA", ""), help="dataset root, $DATA of the scripts")
    p.add_argument("--output", default=os.environ.get("OUTPUT", "output"), help="output root, $OUTPUT (output)")
    p.add_argument("--python", default=sys.executable, help="the Python the scripts run (this one)")
    p.add_argument("--write-list", metavar="FILE", help="write the runs, one command line each")
    p.add_argument("--dry-run", action="store_true", help="print the runs and run nothing")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--gpus", help="comma-separated GPU ids, one run per GPU at a time (default: all visible)")
    where.add_argument("--cpu", action="store_true", help="run on the CPU (--jobs at a time, default 1)")
    where.add_argument("--slurm", action="store_true", help="submit a Slurm job array through submitit")
    p.add_argument("--jobs", type=int, default=1, help="--cpu: runs at a time")
    p.add_argument("--log-dir", help="local logs of each run's printout (default: OUTPUT/sweep_logs)")
    p.add_argument("--verbose", action="store_true", help="show each run's printout (also in its log)")
    s = p.add_argument_group("Slurm (--slurm)")
    s.add_argument("--partition")
    s.add_argument("--timeout-min", type=int, default=720)
    s.add_argument("--gpus-per-job", type=int, default=1)
    s.add_argument("--cpus-per-task", type=int, default=8)
    s.add_argument("--mem-gb", type=float)
    s.add_argument("--array-parallelism", type=int, help="at most this many runs at a time")
    s.add_argument("--slurm-folder", help="submitit's folder (default: OUTPUT/slurm)")
    s.add_argument("--slurm-extra", nargs="+", default=[], metavar="KEY=VALUE", help="more sbatch parameters")
    s.add_argument("--wait", action="store_true", help="wait for the jobs (and report failures)")
    p.add_argument("--table", nargs="+", choices=["base2new", "open_world", "cross_dataset", "domain_generalization",
                                                  "few_shot"],
                   help="after the runs, print these tables (tools/parse_results.py) over the sweep's seeds")
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    own, opts = split_opts(argv)
    p = build_parser()
    args = p.parse_args(own)
    if len(opts) % 2:
        p.error(f"the options must be KEY VALUE pairs: {' '.join(opts)}")
    list_only = args.write_list and not (args.cpu or args.gpus or args.slurm)
    if not args.root and not (args.dry_run or list_only):
        p.error("give the dataset root: --root DATA (or set $DATA)")
    configs = dict(DEFAULT_CONFIGS[args.protocol])
    for entry in args.config:
        if "=" not in entry:
            p.error(f"--config takes TRAINER=CFG or TRAINER@DATASET=CFG, got '{entry}'")
        key, value = entry.split("=", 1)
        configs[key] = value
    datasets = args.datasets or DEFAULT_DATASETS[args.protocol]
    shots = args.shots or ([1, 2, 4, 8, 16] if args.protocol == "few_shot" else [16])
    runs = make_runs(args.protocol, args.trainers, datasets, args.seeds, shots, configs, opts, args.source)
    output = os.path.abspath(args.output)
    env = {"DATA": os.path.abspath(args.root) if args.root else "", "OUTPUT": output, "PYTHON": args.python}
    if args.protocol in ("cross_dataset", "domain_generalization") and args.source != "imagenet":
        env["SOURCE"] = args.source
    if args.write_list:
        write_list(args.write_list, runs, env)
        print(f"{len(runs)} runs written to {args.write_list}")
    if args.dry_run:
        for r in runs:
            print(command_line(r, env))
        return 0
    if list_only:
        return 0
    if args.slurm:
        failed = submit_slurm(runs, env, args)
        if not args.wait:
            return 0
    else:
        if args.cpu:
            slots = [None] * max(1, args.jobs)
        else:
            gpus = args.gpus.split(",") if args.gpus else detect_gpus()
            slots = [g.strip() for g in gpus if g.strip()] or [None]
            if slots == [None]:
                print("No GPU found: running on the CPU, one run at a time")
        failed = run_local(runs, env, slots, args.log_dir or os.path.join(output, "sweep_logs"), args.verbose)
    if args.table:
        from parse_results import main as parse_main

        for table in args.table:
            print()
            parse_main([output, "--protocol", table, "--seeds", *map(str, args.seeds), "--methods", *args.trainers,
                        "--shots", *map(str, shots), "--datasets", *datasets])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
