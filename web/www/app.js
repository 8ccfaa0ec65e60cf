// The fused-optim playground: optimizers stepped by the library's WGSL kernels on WebGPU
// (the wasm module in ./pkg, built by scripts/serve_web.sh or scripts/browser_test.sh).
//
// `?test` runs the browser test's sequence: the default playground, then (once the harness
// has taken its screenshot) every golden case and the benchmark; progress and results are in
// `window.fusedOptimTest`.

import init, * as wasm from './pkg/fused_optim_web.js';

const TEST = new URLSearchParams(location.search).has('test');
// Saturated colours, none of them near the pale contour background (the browser test finds
// each path in the screenshot by its colour).
const COLORS = ['#e8590c', '#1c7ed6', '#2b8a3e', '#c2255c', '#7048e8', '#0b7285', '#f59f00', '#8f5b1e'];
const test = (window.fusedOptimTest = { state: 'loading', errors: [], colors: COLORS });
window.addEventListener('error', (e) => test.errors.push(String(e.message || e)));
window.addEventListener('unhandledrejection', (e) => test.errors.push(String(e.reason && e.reason.message || e.reason)));

const $ = (id) => document.getElementById(id);
let gpu = null;
let functions = [];
let fn = null;          // the current test function's description
let start = null;       // [x, y]
let background = null;  // ImageData of the contour
let runId = 0;          // the current run (a newer one makes older loops stop)
let firstPathsMs = null;
let current = null;     // {names, colors, points, losses, stopped}

function noWebGpu(reason) {
  $('nogpu').hidden = false;
  $('app').hidden = true;
  $('golden').hidden = true;
  if (reason) $('nogpu-reason').textContent = reason;
  $('adapter').textContent = 'no WebGPU';
  $('adapter').className = 'chip bad';
  test.state = 'no-webgpu';
  test.reason = reason;
}

function message(text) { $('message').textContent = text || ''; }

// ---- the contour --------------------------------------------------------------------------
const canvas = $('contour');
const ctx = canvas.getContext('2d');
const PAD = { l: 34, r: 8, t: 8, b: 22 };
const plotW = () => canvas.width - PAD.l - PAD.r;
const plotH = () => canvas.height - PAD.t - PAD.b;
function toPx([x, y]) {
  const [[x0, x1], [y0, y1]] = fn.range;
  return [PAD.l + (x - x0) / (x1 - x0) * plotW(), PAD.t + (y1 - y) / (y1 - y0) * plotH()];
}
function fromPx(px, py) {
  const [[x0, x1], [y0, y1]] = fn.range;
  return [x0 + (px - PAD.l) / plotW() * (x1 - x0), y1 - (py - PAD.t) / plotH() * (y1 - y0)];
}

function lerp(a, b, t) { return a + (b - a) * t; }
const STOPS = [[0, [165, 190, 226]], [0.35, [214, 226, 242]], [0.7, [243, 245, 249]], [1, [252, 244, 229]]];
function colormap(t) {
  for (let k = 1; k < STOPS.length; k++) {
    if (t <= STOPS[k][0]) {
      const [ta, ca] = STOPS[k - 1], [tb, cb] = STOPS[k];
      const u = (t - ta) / (tb - ta);
      return ca.map((c, i) => lerp(c, cb[i], u));
    }
  }
  return STOPS[STOPS.length - 1][1];
}

function drawBackground() {
  const w = plotW(), h = plotH();
  const grid = wasm.function_grid(fn.name, w, h);
  const logs = new Float64Array(grid.length);
  let lo = Infinity, hi = -Infinity;
  for (let i = 0; i < grid.length; i++) {
    const v = Math.log10(grid[i] + 1e-2);
    logs[i] = v; lo = Math.min(lo, v); hi = Math.max(hi, v);
  }
  const LEVELS = 18;
  const img = ctx.createImageData(w, h);
  const band = (i) => Math.floor((logs[i] - lo) / (hi - lo) * LEVELS);
  for (let j = 0; j < h; j++) {
    for (let i = 0; i < w; i++) {
      const k = j * w + i;
      let [r, g, b] = colormap((logs[k] - lo) / (hi - lo));
      const edge = (i + 1 < w && band(k + 1) !== band(k)) || (j + 1 < h && band(k + w) !== band(k));
      if (edge) { r *= 0.78; g *= 0.8; b *= 0.84; }
      img.data.set([r, g, b, 255], 4 * k);
    }
  }
  ctx.fillStyle = '#fff';
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.putImageData(img, PAD.l, PAD.t);
  // Axes: ticks at the range's integers (or halves).
  ctx.fillStyle = '#5f6b7a';
  ctx.font = '11px system-ui, sans-serif';
  const [[x0, x1], [y0, y1]] = fn.range;
  const step = (a, b) => ((b - a) > 6 ? 2 : (b - a) > 3 ? 1 : 0.5);
  ctx.textAlign = 'center';
  for (let x = Math.ceil(x0 / step(x0, x1)) * step(x0, x1); x <= x1 + 1e-9; x += step(x0, x1)) {
    ctx.fillText(String(+x.toFixed(2)), toPx([x, y0])[0], canvas.height - 6);
  }
  ctx.textAlign = 'right';
  for (let y = Math.ceil(y0 / step(y0, y1)) * step(y0, y1); y <= y1 + 1e-9; y += step(y0, y1)) {
    ctx.fillText(String(+y.toFixed(2)), PAD.l - 4, toPx([x0, y])[1] + 4);
  }
  background = ctx.getImageData(0, 0, canvas.width, canvas.height);
}

function marker([x, y], draw) {
  const [px, py] = toPx([x, y]);
  ctx.save();
  draw(px, py);
  ctx.restore();
}

function drawPaths() {
  ctx.putImageData(background, 0, 0);
  ctx.save();
  ctx.beginPath();
  ctx.rect(PAD.l, PAD.t, plotW(), plotH());
  ctx.clip();
  for (const m of fn.minima) {
    marker(m, (px, py) => {
      ctx.strokeStyle = '#fff'; ctx.lineWidth = 2;
      ctx.beginPath(); ctx.moveTo(px - 6, py - 6); ctx.lineTo(px + 6, py + 6);
      ctx.moveTo(px + 6, py - 6); ctx.lineTo(px - 6, py + 6); ctx.stroke();
    });
  }
  if (current) {
    // Longest path (on screen) first, so that short paths stay visible on top of long ones.
    const length = (pts) => pts.reduce((sum, p, i) => {
      if (i === 0) return 0;
      const [ax, ay] = toPx(pts[i - 1]), [bx, by] = toPx(p);
      return sum + Math.min(Math.hypot(bx - ax, by - ay), 1e4);
    }, 0);
    const order = current.points.map((pts, k) => [length(pts), k]).sort((a, b) => b[0] - a[0]);
    order.forEach(([, k]) => {
      const pts = current.points[k];
      ctx.strokeStyle = current.colors[k];
      ctx.lineWidth = 2.5;
      ctx.lineJoin = 'round';
      ctx.beginPath();
      pts.forEach((p, i) => {
        const [px, py] = toPx(p);
        if (i === 0) ctx.moveTo(px, py); else ctx.lineTo(px, py);
      });
      ctx.stroke();
    });
  }
  if (start) {
    marker(start, (px, py) => {
      ctx.strokeStyle = '#fff'; ctx.lineWidth = 2;
      ctx.beginPath(); ctx.arc(px, py, 6, 0, 2 * Math.PI); ctx.stroke();
    });
  }
  // Where each optimizer is now, on top of every path.
  if (current) {
    current.points.forEach((pts, k) => {
      marker(pts[pts.length - 1], (px, py) => {
        ctx.fillStyle = current.colors[k];
        ctx.strokeStyle = '#fff'; ctx.lineWidth = 1;
        ctx.beginPath(); ctx.arc(px, py, 4.5, 0, 2 * Math.PI); ctx.fill(); ctx.stroke();
      });
    });
  }
  ctx.restore();
}

// ---- the loss plot ------------------------------------------------------------------------
function drawLoss() {
  const c = $('loss');
  const g = c.getContext('2d');
  const P = { l: 40, r: 10, t: 10, b: 24 };
  const w = c.width - P.l - P.r, h = c.height - P.t - P.b;
  g.fillStyle = '#fff';
  g.fillRect(0, 0, c.width, c.height);
  if (!current) return;
  const steps = Math.max(1, ...current.losses.map((l) => l.length - 1));
  const logs = current.losses.map((ls) => ls.map((v) => Math.log10(Math.max(v, 1e-14))));
  const all = logs.flat().filter(Number.isFinite);
  let lo = Math.floor(Math.min(...all)), hi = Math.ceil(Math.max(...all));
  if (hi - lo < 1) hi = lo + 1;
  const X = (k) => P.l + k / steps * w;
  const Y = (v) => P.t + (hi - v) / (hi - lo) * h;
  g.strokeStyle = '#e9ecef'; g.fillStyle = '#5f6b7a'; g.font = '11px system-ui, sans-serif';
  g.textAlign = 'right';
  const every = Math.max(1, Math.ceil((hi - lo) / 8));
  for (let v = lo; v <= hi; v += every) {
    g.beginPath(); g.moveTo(P.l, Y(v)); g.lineTo(P.l + w, Y(v)); g.stroke();
    g.fillText(String(v), P.l - 5, Y(v) + 4);
  }
  g.textAlign = 'center';
  for (let i = 0; i <= 4; i++) {
    const k = Math.round(steps * i / 4);
    g.fillText(String(k), X(k), c.height - 7);
  }
  logs.forEach((ls, k) => {
    g.strokeStyle = current.colors[k]; g.lineWidth = 1.8;
    g.beginPath();
    ls.forEach((v, i) => { if (i === 0) g.moveTo(X(i), Y(v)); else g.lineTo(X(i), Y(v)); });
    g.stroke();
  });
}

function drawFinals() {
  const body = $('finals').querySelector('tbody');
  body.innerHTML = '';
  if (!current) return;
  current.names.forEach((name, k) => {
    const ls = current.losses[k];
    const tr = document.createElement('tr');
    const f = ls[ls.length - 1];
    tr.innerHTML = `<td><span class="swatch" style="display:inline-block;width:10px;height:10px;border-radius:2px;background:${current.colors[k]}"></span></td>
      <td>${name}</td><td>${Number.isFinite(f) ? f.toExponential(3) : 'diverged'}</td>
      <td>${ls.length - 1}${current.stopped[k] ? ' (stopped: diverged)' : ''}</td>`;
    body.appendChild(tr);
  });
  $('legend').innerHTML = current.names
    .map((n, k) => `<span style="--c:${current.colors[k]}">${n}</span>`).join('');
}

// ---- the optimizer list -------------------------------------------------------------------
function renderOptimizers() {
  const presets = JSON.parse(wasm.classic_optimizers(fn.name));
  const box = $('optimizers');
  box.innerHTML = '';
  presets.forEach((p, k) => {
    const { lr, ...rest } = p.hparams;
    const row = document.createElement('div');
    row.className = 'opt';
    row.dataset.name = p.name;
    row.dataset.class = p.class;
    row.innerHTML = `<div class="head">
        <input type="checkbox" checked aria-label="use ${p.name}">
        <span class="swatch" style="background:${COLORS[k % COLORS.length]}"></span>
        <span class="name">${p.name}</span><span class="cls">${p.class}</span>
        <label>lr <input class="lr" type="number" step="any" value="${lr}"></label>
      </div>
      <details><summary>hyper-parameters (PyTorch names)</summary>
        <textarea spellcheck="false"></textarea></details>`;
    row.querySelector('textarea').value = JSON.stringify(rest);
    row.dataset.color = COLORS[k % COLORS.length];
    box.appendChild(row);
  });
}

function chosen() {
  const out = [];
  for (const row of $('optimizers').querySelectorAll('.opt')) {
    if (!row.querySelector('input[type=checkbox]').checked) continue;
    let rest;
    try {
      rest = JSON.parse(row.querySelector('textarea').value || '{}');
    } catch (e) {
      throw new Error(`${row.dataset.name}: the hyper-parameters are not JSON (${e.message})`);
    }
    const lr = Number(row.querySelector('input.lr').value);
    out.push({ name: row.dataset.name, color: row.dataset.color,
      spec: { class: row.dataset.class, hparams: { ...rest, lr } } });
  }
  return out;
}

// ---- running ------------------------------------------------------------------------------
async function run() {
  const id = ++runId;
  message('');
  let opts;
  try {
    opts = chosen();
  } catch (e) {
    message(e.message);
    return;
  }
  const steps = Math.max(1, Math.min(5000, Math.floor(Number($('steps').value) || 300)));
  let pg;
  try {
    pg = gpu.playground(fn.name, JSON.stringify(opts.map((o) => o.spec)), start[0], start[1]);
  } catch (e) {
    message(String(e.message || e));
    return;
  }
  const f0 = wasm.function_value(fn.name, start[0], start[1]);
  current = {
    names: opts.map((o) => o.name), colors: opts.map((o) => o.color),
    points: opts.map(() => [start.slice()]), losses: opts.map(() => [f0]),
    stopped: opts.map(() => false),
  };
  $('start').textContent = `(${start[0].toFixed(2)}, ${start[1].toFixed(2)})`;
  const t0 = performance.now();
  let done = 0;
  try {
    while (done < steps && id === runId) {
      const chunk = Math.min(done === 0 ? 8 : 24, steps - done);
      const r = JSON.parse(await pg.step(chunk));
      if (id !== runId) break;
      r.points.forEach((flat, k) => {
        for (let i = 0; i < flat.length; i += 2) current.points[k].push([flat[i], flat[i + 1]]);
      });
      r.losses.forEach((ls, k) => current.losses[k].push(...ls));
      current.stopped = r.stopped;
      done += chunk;
      drawPaths();
      drawLoss();
      if (firstPathsMs === null) {
        firstPathsMs = performance.now();
        test.firstPathsMs = firstPathsMs;
      }
      if (r.stopped.every(Boolean)) break;
    }
  } catch (e) {
    message(`stepping failed: ${e.message || e}`);
    test.errors.push(String(e.message || e));
  } finally {
    pg.free();
  }
  if (id !== runId) return;
  drawFinals();
  const ms = performance.now() - t0;
  $('timing').textContent = `${done} steps × ${opts.length} optimizers on WebGPU in ${ms.toFixed(0)} ms`
    + (firstPathsMs !== null ? ` · first paths drawn ${(firstPathsMs / 1000).toFixed(2)} s after page load` : '');
  return { steps: done, ms };
}

function setFunction(name) {
  fn = functions.find((f) => f.name === name);
  start = fn.start.slice();
  current = null;
  drawBackground();
  renderOptimizers();
  drawPaths();
  drawLoss();
  drawFinals();
}

canvas.addEventListener('click', (e) => {
  if (!gpu) return;
  const r = canvas.getBoundingClientRect();
  const px = (e.clientX - r.left) * canvas.width / r.width;
  const py = (e.clientY - r.top) * canvas.height / r.height;
  if (px < PAD.l || px > PAD.l + plotW() || py < PAD.t || py > PAD.t + plotH()) return;
  start = fromPx(px, py);
  run();
});

// ---- golden replay and benchmark ------------------------------------------------------------
function esc(s) { return String(s).replace(/[&<>]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;' }[c])); }

async function replayGolden() {
  $('golden-run').disabled = true;
  const files = JSON.parse(wasm.golden_files());
  const body = $('golden-table').querySelector('tbody');
  body.innerHTML = '';
  const counts = { PASS: 0, FAIL: 0, SKIP: 0 };
  const results = [];
  const t0 = performance.now();
  for (const [i, file] of files.entries()) {
    let r;
    try {
      const resp = await fetch(`../../golden/${file}`);
      if (!resp.ok) throw new Error(`fetch ${file}: HTTP ${resp.status}`);
      const bytes = new Uint8Array(await resp.arrayBuffer());
      r = JSON.parse(await gpu.replay_golden(file, bytes));
    } catch (e) {
      r = { file, case: file, status: 'FAIL', detail: String(e.message || e), parts: [] };
    }
    results.push(r);
    counts[r.status]++;
    const tr = document.createElement('tr');
    const failures = r.parts.flatMap((p) => p.failures.map((f) => `[${p.impl}] ${f}`));
    tr.innerHTML = `<td>${esc(r.case)}</td><td class="status ${r.status}">${r.status}</td>
      <td class="detail">${esc(r.detail)}${failures.length ? '<br>' + failures.map(esc).join('<br>') : ''}</td>`;
    body.appendChild(tr);
    $('golden-summary').textContent =
      `${i + 1}/${files.length} · ${counts.PASS} passed, ${counts.FAIL} failed, ${counts.SKIP} skipped`;
  }
  $('golden-summary').className = `summary ${counts.FAIL ? 'FAIL' : 'PASS'}`;
  $('golden-run').disabled = false;
  return { results, counts, ms: performance.now() - t0 };
}

async function bench() {
  $('bench-run').disabled = true;
  $('bench').textContent = 'benchmarking Adam at 2^20 parameters on WebGPU…';
  try {
    const r = JSON.parse(await gpu.bench(20, 1500));
    $('bench').textContent = `Adam, 2^20 params: ${(r.adam.seconds_per_step * 1e3).toFixed(2)} ms/step `
      + `(${r.adam.gbps.toFixed(2)} GB/s; its roof ${r.adam_roof.gbps.toFixed(2)} GB/s, `
      + `${(100 * r.adam_fraction_of_roof).toFixed(0)}% of it); copy kernel ${r.copy_kernel.gbps.toFixed(2)} GB/s `
      + `(Adam/copy GB/s ${r.adam_gbps_over_copy_gbps.toFixed(2)}); lanes ${r.lanes}`;
    return r;
  } catch (e) {
    $('bench').textContent = `benchmark failed: ${e.message || e}`;
    throw e;
  } finally {
    $('bench-run').disabled = false;
  }
}

// ---- start --------------------------------------------------------------------------------
async function main() {
  if (!('gpu' in navigator)) {
    noWebGpu('navigator.gpu is missing: this browser (or this context: WebGPU needs https or localhost) has no WebGPU.');
    return;
  }
  const adapter = await navigator.gpu.requestAdapter().catch(() => null);
  if (!adapter) {
    noWebGpu('This browser has WebGPU (navigator.gpu) but gives no adapter: WebGPU may be turned off '
      + 'or the GPU blocklisted (Chrome on Linux: start it with --enable-unsafe-webgpu).');
    return;
  }
  await init();
  try {
    gpu = await wasm.init_gpu();
  } catch (e) {
    noWebGpu(`WebGPU is there but gives no usable device: ${e.message || e}`);
    return;
  }
  const info = JSON.parse(gpu.describe());
  test.describe = info;
  // The browser's own description of its adapter (wgpu's adapter name is empty on the web).
  const ai = adapter.info || {};
  info.browser_adapter = [ai.vendor, ai.architecture, ai.description].filter(Boolean).join(' ');
  $('adapter').textContent = `WebGPU ${info.browser_adapter || 'adapter'} · lanes ${info.lanes} · f16 ${info.native_f16 ? 'native' : 'packed'} · ${info.max_storage_buffers_per_stage} storage buffers/stage`;
  $('adapter').title = $('adapter').textContent;
  $('adapter').className = 'chip ok';
  functions = JSON.parse(wasm.test_functions());
  const sel = $('function');
  sel.innerHTML = functions.map((f) => `<option value="${f.name}">${f.name[0].toUpperCase() + f.name.slice(1)}</option>`).join('');
  sel.addEventListener('change', () => { setFunction(sel.value); run(); });
  $('run').addEventListener('click', () => run());
  $('golden-run').addEventListener('click', () => replayGolden());
  $('bench-run').addEventListener('click', () => bench().catch(() => {}));
  setFunction('rosenbrock');
  test.state = 'stepping';
  const r = await run();
  test.playground = { ...current, run: r, function: fn.name };
  if (!TEST) return;
  test.state = 'paths-drawn';
  // The harness takes its screenshot now and sets `proceed`.
  while (!test.proceed) await new Promise((ok) => setTimeout(ok, 50));
  test.selfCheck = JSON.parse(gpu.self_check());
  try {
    test.f16 = JSON.parse(await gpu.f16_check());
  } catch (e) {
    test.f16 = { passed: false, error: String(e.message || e) };
  }
  test.state = 'golden';
  test.golden = await replayGolden();
  test.state = 'bench';
  try {
    test.bench = await bench();
  } catch (e) {
    test.bench = { error: String(e.message || e) };
  }
  test.state = 'done';
}

main().catch((e) => {
  test.errors.push(String(e.message || e));
  test.state = 'error';
  message(String(e.message || e));
});
