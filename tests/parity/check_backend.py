"""The parity suite through the `vmoe` tool, for a machine without Check or
a build tree's tests (a lent GPU): runs every case's inputs with `vmoe run
--logits` and the given backend options, and prints the worst relative logit
error (max |c - ref| / max |ref| per image) and any routing difference
against the PyTorch references of make_references.py.

    python3 tests/parity/check_backend.py VMOE PARITY_DIR [vmoe run options...]

Exit status 1 when an error exceeds --tolerance or a routing decision differs.
"""

import json
import os
import subprocess
import sys


def main():
    vmoe, parity_dir, options = sys.argv[1], sys.argv[2], sys.argv[3:]
    tolerance = 1e-3
    if "--tolerance" in options:
        at = options.index("--tolerance")
        tolerance = float(options[at + 1])
        del options[at:at + 2]
    with open(os.path.join(parity_dir, "expected.json")) as f:
        cases = json.load(f)["cases"]
    worst, failures = 0.0, 0
    for case in cases:
        model = os.path.join(parity_dir, case["model"])
        for expected in case["inputs"]:
            if "regions" in expected:
                continue    # a region per frame: test_parity's; --roi takes one
            out = subprocess.run([vmoe, "run", model, os.path.join(parity_dir, expected["file"]),
                                  "--logits", "--batch", "16"] + options,
                                 check=True, capture_output=True, text=True).stdout
            for i, line in enumerate(out.splitlines()):
                got = json.loads(line)
                ref = expected["logits"][i]
                err = max(abs(a - b) for a, b in zip(got["logits"], ref)) / max(
                    max(abs(b) for b in ref), 1e-12)
                worst = max(worst, err)
                routing_ok = got.get("experts", []) == expected.get("experts", [[]] * (i + 1))[i]
                if "tokens_per_expert" in expected:
                    routing_ok = routing_ok and all(
                        layer["tokens_per_expert"] == ref_counts and layer["dropped"] == ref_drop
                        for layer, ref_counts, ref_drop in zip(
                            got["layers"], expected["tokens_per_expert"][i], expected["dropped"][i]))
                if err > tolerance or not routing_ok:
                    failures += 1
                    print("%s/%s image %d: error %.3g, routing %s" % (
                        case["name"], expected["kind"], i, err, "same" if routing_ok else "DIFFERS"))
    print("parity over %d cases: worst relative logit error %.3g, %d failures" % (
        len(cases), worst, failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
