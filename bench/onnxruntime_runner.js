// ONNX Runtime (onnxruntime-node) on the CPU for bench/cpu_vs_onnxruntime.py:
// all cores (one intra-op thread per core), full graph optimisation.  Prints
// one JSON object.
//
//   node onnxruntime_runner.js [--no-spin] NODE_MODULES MODEL.onnx logits INPUT.f32 N C H W
//       -> {"logits": [[...], ...], "experts": [[...], ...] (MoE graphs only)}
//   node onnxruntime_runner.js [--no-spin] NODE_MODULES MODEL.onnx bench N C H W SECONDS
//       -> {"images_per_s", "latency_ms": {"p50", "p90", "p99"}, "threads", "version"}
//
// ONNX Runtime's intra-op threads spin while they wait for work unless told
// otherwise; --no-spin tells them (session.intra_op.allow_spinning = 0), as
// one would where other processes share the cores.
//
// "bench" times session.run as `vmoe bench` times its calls: one untimed call
// first, then calls on the same random input until SECONDS have passed and at
// least three calls were made; percentiles are the nearest rank of the sorted
// per-call latencies.
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');

function fail(message) {
  process.stderr.write(`onnxruntime_runner: ${message}\n`);
  process.exit(1);
}

function percentile(sorted, q) {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * (sorted.length - 1) + 0.5))];
}

function rows(tensor, toNumber) {
  const [n] = tensor.dims;
  const width = tensor.data.length / n;
  const out = [];
  for (let i = 0; i < n; i++)
    out.push(Array.from(tensor.data.subarray(i * width, (i + 1) * width), toNumber));
  return out;
}

async function main() {
  const args = process.argv.slice(2);
  const noSpin = args[0] === '--no-spin';
  const [nodeModules, modelPath, mode, ...rest] = noSpin ? args.slice(1) : args;
  if (!nodeModules || !modelPath || !['logits', 'bench'].includes(mode))
    fail('usage: [--no-spin] NODE_MODULES MODEL.onnx (logits INPUT.f32 N C H W | bench N C H W SECONDS)');
  const ort = require(path.resolve(nodeModules, 'onnxruntime-node'));
  const threads = os.availableParallelism();
  const session = await ort.InferenceSession.create(modelPath, {
    executionProviders: ['cpu'],
    graphOptimizationLevel: 'all',
    executionMode: 'sequential',
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    extra: noSpin ? { session: { intra_op: { allow_spinning: '0' } } } : {},
  });
  const inputFile = mode === 'logits' ? rest.shift() : null;
  const dims = rest.slice(0, 4).map(Number);
  if (dims.length !== 4 || !dims.every((d) => Number.isInteger(d) && d > 0))
    fail('N C H W must be positive integers');
  const count = dims.reduce((a, b) => a * b, 1);

  if (mode === 'logits') {
    const bytes = fs.readFileSync(inputFile);
    if (bytes.length !== count * 4)
      fail(`${inputFile} holds ${bytes.length} bytes, not ${count} float32 values`);
    // A copy: a small file's Buffer may sit at an offset of a shared pool
    // that is not a multiple of 4.
    const data = new Float32Array(count);
    new Uint8Array(data.buffer).set(bytes);
    const out = await session.run({ images: new ort.Tensor('float32', data, dims) });
    const result = { logits: rows(out.logits, Number) };
    if (out.experts)
      result.experts = rows(out.experts, Number);
    process.stdout.write(JSON.stringify(result) + '\n');
    return;
  }

  const seconds = Number(rest[4]);
  if (!(seconds > 0))
    fail('SECONDS must be positive');
  // Uniform in [-2, 2), as `vmoe bench` feeds its engine.
  const data = new Float32Array(count);
  for (let i = 0; i < count; i++)
    data[i] = Math.random() * 4 - 2;
  const feeds = { images: new ort.Tensor('float32', data, dims) };
  await session.run(feeds);
  const latencies = [];
  const start = process.hrtime.bigint();
  let elapsed = 0;
  while (elapsed < seconds || latencies.length < 3) {
    const t0 = process.hrtime.bigint();
    await session.run(feeds);
    const t1 = process.hrtime.bigint();
    latencies.push(Number(t1 - t0) / 1e6);
    elapsed = Number(t1 - start) / 1e9;
  }
  latencies.sort((a, b) => a - b);
  process.stdout.write(JSON.stringify({
    images_per_s: latencies.length * dims[0] / elapsed,
    latency_ms: { p50: percentile(latencies, 0.5), p90: percentile(latencies, 0.9),
                  p99: percentile(latencies, 0.99) },
    threads,
    version: ort.env.versions.node,
  }) + '\n');
}

main().catch((e) => fail(e && e.message ? e.message : String(e)));
