"""Fused linear + divergence (kdbench.losses.linear_divergence) against the eager reference,
which materialises the logits, and torch.compile of that reference: forward + backward time and
peak extra memory, side by side in one run.

    python benchmarks/linear_divergence.py                      # the recorded subset
    python benchmarks/linear_divergence.py --cases 2048x512x32000:fp32 --settings native,default

A case is ROWSxHIDDENxVOCAB:DTYPE; the student's head and the teacher's (hidden states of the
same size, their own head, no bias) give the logits; the loss is the forward KL at T = 2;
``torch.autograd.grad`` wants the student's hidden states and head.  Each (setting, case,
implementation) runs in a fresh process, one thread, OMP_WAIT_POLICY=PASSIVE: a warm-up step
(which compiles), then ``--rounds`` timed steps (median).

Peak extra memory: before each timed step the process's peak-RSS mark is reset (``5`` written
to /proc/self/clear_refs, Linux >= 4.0) and the RSS read; after it, the peak (VmHWM) minus that
RSS is the step's peak extra memory: everything the step touched beyond the inputs, its
outputs (the gradients) included, whatever allocated it (ATen, oneDNN, Inductor's buffers).
glibc returns large blocks to the kernel when freed, so the RSS before a step does not hold the
previous step's buffers.

CPU settings: ``native`` (nothing set), and ``ATEN_CPU_CAPABILITY`` with
``ONEDNN_MAX_CPU_ISA``: avx512/AVX512_CORE, avx2/AVX2, default/SSE41.  (fp32 matmuls go to MKL,
which these variables do not steer.)  A case may name ``--eager-max-rows``: beyond it the eager
and compiled references are not run (their logits would not fit in memory) and the table says so.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's kdbench, not an installed one

SETTINGS = {
    "native": {},
    "avx512": {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "default": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"},
}
IMPLS = ("fused", "eager", "compiled")
DEFAULT_CASES = "2048x512x32000:fp32,512x512x32000:bf16,2048x64x128256:fp32,8192x64x128256:fp32"


def _rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure_one(impl, rows, hidden, vocab, dtype_name, rounds):
    """Runs in the child process; prints one JSON line."""
    import torch

    from kdbench import losses

    torch.set_num_threads(1)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    g = torch.Generator().manual_seed(0)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    h = rand(rows, hidden).requires_grad_(True)
    w = rand(vocab, hidden, scale=hidden ** -0.5).requires_grad_(True)
    th, tw = rand(rows, hidden), rand(vocab, hidden, scale=hidden ** -0.5)
    kw = dict(teacher_hidden=th, teacher_weight=tw, divergence="forward_kl", temperature=2.0)
    if impl == "fused":
        assert losses.backend("cpu", dtype) == "fused"
        fn = losses.linear_divergence
    elif impl == "eager":
        fn = losses.linear_divergence_reference
    else:
        fn = torch.compile(losses.linear_divergence_reference, dynamic=False)

    def step():
        return torch.autograd.grad(fn(h, w, **kw), (h, w))

    t0 = time.perf_counter()
    out = step()  # warm-up (compiles)
    warm = time.perf_counter() - t0
    loss_value = float(fn(h.detach(), w.detach(), **kw)) if impl != "compiled" else None
    del out
    times, peaks = [], []
    for _ in range(rounds):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _rss_kib("VmRSS")
        t0 = time.perf_counter()
        out = step()
        times.append(time.perf_counter() - t0)
        peaks.append(_rss_kib("VmHWM") - before)
        del out
    print(json.dumps({"impl": impl, "time_s": statistics.median(times), "times": times, "warmup_s": warm,
                      "peak_extra_mib": max(peaks) / 1024, "loss": loss_value,
                      "cpu_capability": torch.backends.cpu.get_cpu_capability()}))


def parse_case(text):
    shape, dtype = text.split(":")
    rows, hidden, vocab = (int(x) for x in shape.split("x"))
    return rows, hidden, vocab, dtype


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=DEFAULT_CASES, help="comma-separated ROWSxHIDDENxVOCAB:DTYPE")
    parser.add_argument("--settings", default="native,default", help=f"comma-separated, of {sorted(SETTINGS)}")
    parser.add_argument("--settings-cases", default="2048x512x32000:fp32",
                        help="the cases run under the settings after the first (all: every case)")
    parser.add_argument("--eager-max-rows", type=int, default=2048,
                        help="at 128256 classes, rows beyond which eager/compiled are skipped (memory)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        impl, case = args.one.split("@")
        measure_one(impl, *parse_case(case), args.rounds)
        return 0

    settings = args.settings.split(",")
    print("| setting | case | impl | time (s) | peak extra (MiB) | fused time / this | fused memory / this |")
    print("|---|---|---|---|---|---|---|", flush=True)
    for k, setting in enumerate(settings):
        cases = args.cases if k == 0 or args.settings_cases == "all" else args.settings_cases
        for case in cases.split(","):
            rows, hidden, vocab, dtype = parse_case(case)
            results = {}
            for impl in IMPLS:
                if impl != "fused" and vocab > 32000 and rows > args.eager_max_rows:
                    print(f"| {setting} | {case} | {impl} | not run: logits do not fit | | | |", flush=True)
                    continue
                env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", **SETTINGS[setting]}
                proc = subprocess.run([sys.executable, __file__, "--one", f"{impl}@{case}", "--rounds", str(args.rounds)],
                                      capture_output=True, text=True, env=env)
                if proc.returncode != 0:
                    tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
                    print(f"| {setting} | {case} | {impl} | failed: {tail} | | | |", flush=True)
                    continue
                results[impl] = r = json.loads(proc.stdout.strip().splitlines()[-1])
                f = results.get("fused")
                time_ratio = f"{f['time_s'] / r['time_s']:.2f}" if f and impl != "fused" else ""
                mem_ratio = f"{f['peak_extra_mib'] / r['peak_extra_mib']:.3f}" if f and impl != "fused" else ""
                print(f"| {setting} ({r['cpu_capability']}) | {case} | {impl} | {r['time_s']:.2f} | "
                      f"{r['peak_extra_mib']:.0f} | {time_ratio} | {mem_ratio} |", flush=True)
            if "fused" in results and "eager" in results:
                a, b = results["fused"]["loss"], results["eager"]["loss"]
                assert abs(a - b) <= 2e-2 * abs(b) + 1e-6, f"fused loss {a} vs eager {b}"
    return 0


if __name__ == "__main__":
    sys.exit(main())
