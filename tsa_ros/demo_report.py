"""The report of ``tsa demo``: one self-contained HTML page (PNGs inlined) and its numbers.

Pure core (numpy, matplotlib): the ROS side (:mod:`tsa_ros.ros.demo`) hands over what it
observed on the graph's topics as a :class:`DemoRun`; this module scores it and draws it.

* per phase (clean, then each attack) a mosaic of one frame: the camera as the networks saw
  it, the perturbation amplified, T, S, A, the fused mask, the disagreement map and the
  ground truth, with a colour legend;
* mIoU per network and for the fused mask per phase, on the same camera frames in every
  phase, and the mIoU ratio adversarial / clean in % (eq. 11);
* time series over the run: each network's disagreement with the fused mask and the
  suspected network, the learner's J_CE / J_FM / J_IFM and snapshot versions, the
  camera-to-fused latency and frames skipped, with the attack phases shaded;
* the configuration and the versions of the run.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tsa_ros.data.labels import CLASS_NAMES, TRAIN_COLORS, colorize
from tsa_ros.fusion import DISAGREEMENT_COLORS, colorize_disagreement, disagreement_map
from tsa_ros.metrics import ConfusionMatrix, format_number, miou_ratio, percent

#: Streams scored in every phase, in the order of tables and mosaics.
STREAMS = ('teacher', 'student', 'adaptive', 'fused')
LETTER = {'teacher': 'T', 'student': 'S', 'adaptive': 'A', 'fused': 'fused'}
ROLE_COLORS = {'teacher': '#1f77b4', 'student': '#d62728', 'adaptive': '#2ca02c'}


@dataclass
class Phase:
    """One part of the demo: the same camera frames, clean or attacked.

    Attributes:
        name: e.g. 'clean', 'S-AE eps=1'.
        target: attacked network ('teacher', 'student') or '' for clean frames.
        epsilon: L-inf bound in gray values (0 = clean).
    """

    name: str
    target: str = ''
    epsilon: float = 0.0


@dataclass
class FrameRecord:
    """What the graph answered for one camera frame."""

    phase: str
    index: int  # the frame's index in the demo's frame list (same in every phase)
    time_s: float  # since the first phase began
    latency_ms: float | None  # camera publication -> fused mask
    roles: list[str]
    missing_roles: list[str]
    disagreement: dict[str, float]
    suspected_role: str
    degraded: bool


@dataclass
class PhaseImages:
    """One frame of a phase, for the mosaic: the images as the networks saw them."""

    clean: np.ndarray  # (H, W, 3) uint8
    shown: np.ndarray  # what the camera topic carried (adversarial in attack phases)
    labels: dict[str, np.ndarray]  # stream -> (H, W) uint8 trainIds
    ground_truth: np.ndarray


@dataclass
class DemoRun:
    """Everything the demo observed; scored and drawn by :func:`write_report`."""

    phases: list[Phase]
    frame_ids: list[str]  # the camera frames (data set stems), the same in every phase
    frames: list[FrameRecord] = field(default_factory=list)
    confusion: dict[str, dict[str, ConfusionMatrix]] = field(default_factory=dict)
    images: dict[str, PhaseImages] = field(default_factory=dict)
    phase_times: dict[str, tuple[float, float]] = field(default_factory=dict)  # start, end (s)
    learner: list[dict[str, float]] = field(default_factory=list)  # time_s, step, version, ...
    counters: list[dict[str, float]] = field(default_factory=list)  # time_s, skipped, lost
    networks: dict[str, dict[str, Any]] = field(default_factory=dict)  # role -> arch, mIoU ...
    config: str = ''  # the graph's params file (YAML text)
    environment: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    command: str = ''

    def score(self, phase: str, stream: str, prediction: np.ndarray, truth: np.ndarray) -> None:
        """Add one predicted label map of ``stream`` in ``phase`` to its confusion matrix."""
        per_phase = self.confusion.setdefault(phase, {})
        per_phase.setdefault(stream, ConfusionMatrix()).update(prediction, truth)


# ------------------------------------------------------------------------- numbers
def scores(run: DemoRun) -> dict[str, dict[str, dict[str, float | None]]]:
    """phase -> stream -> {'miou': %, 'ratio': % of the clean phase's mIoU, 'frames': n}."""
    clean = run.phases[0].name
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for phase in run.phases:
        out[phase.name] = {}
        for stream in STREAMS:
            matrix = run.confusion.get(phase.name, {}).get(stream)
            if matrix is None or matrix.total == 0:
                out[phase.name][stream] = {'miou': None, 'ratio': None, 'frames': 0}
                continue
            miou = matrix.miou()
            base = run.confusion.get(clean, {}).get(stream)
            ratio = None
            if base is not None and base.total and base.miou() > 0:
                ratio = percent(miou_ratio(miou, base.miou()))
            frames = sum(
                1 for f in run.frames if f.phase == phase.name and _stream_present(f, stream)
            )
            out[phase.name][stream] = {'miou': percent(miou), 'ratio': ratio, 'frames': frames}
    return out


def _stream_present(frame: FrameRecord, stream: str) -> bool:
    return stream == 'fused' or stream in frame.roles


def detection(run: DemoRun) -> dict[str, dict[str, Any]]:
    """Per phase: how often a network was suspected, and how often it was the attacked one."""
    out = {}
    for phase in run.phases:
        frames = [f for f in run.frames if f.phase == phase.name]
        suspected = [f.suspected_role for f in frames if f.suspected_role]
        out[phase.name] = {
            'frames': len(frames),
            'suspected': len(suspected),
            'suspected_attacked': sum(1 for s in suspected if s == phase.target),
            'complete': sum(1 for f in frames if len(f.roles) == 3),
            'degraded': sum(1 for f in frames if f.degraded),
        }
    return out


# ------------------------------------------------------------------------- images
def _png(image: np.ndarray) -> bytes:
    import cv2

    ok, data = cv2.imencode('.png', np.ascontiguousarray(image[..., ::-1]))
    if not ok:
        raise RuntimeError('PNG encoding failed')
    return data.tobytes()


def _data_uri(png: bytes) -> str:
    return 'data:image/png;base64,' + base64.b64encode(png).decode('ascii')


def perturbation_image(clean: np.ndarray, shown: np.ndarray, epsilon: float) -> np.ndarray:
    """The perturbation shown - clean, amplified so that +-epsilon spans the gray scale
    (mid-gray = unchanged): at epsilon = 1 the change is invisible in the frame itself."""
    delta = shown.astype(np.float32) - clean.astype(np.float32)
    scale = 127.0 / max(float(epsilon), 1.0)
    return np.clip(np.round(128.0 + scale * delta), 0, 255).astype(np.uint8)


def mosaic_panels(run: DemoRun, phase: Phase) -> list[tuple[str, np.ndarray]]:
    """(caption, RGB image) of one phase's mosaic, left to right."""
    images = run.images[phase.name]
    panels = [('camera' + (' (attacked)' if phase.target else ''), images.shown)]
    if phase.target:
        panels.append(
            (
                f'perturbation x{127 / max(phase.epsilon, 1.0):.0f}',
                perturbation_image(images.clean, images.shown, phase.epsilon),
            )
        )
    else:
        panels.append(('perturbation (none)', np.full_like(images.clean, 128)))
    for stream in STREAMS:
        labels = images.labels.get(stream)
        if labels is None:
            panels.append((f'{LETTER[stream]}: no answer', np.zeros_like(images.clean)))
        else:
            panels.append((LETTER[stream], colorize(labels)))
    roles = [images.labels[r] for r in STREAMS[:3] if r in images.labels]
    if roles and 'fused' in images.labels:
        counts = disagreement_map(np.stack(roles), images.labels['fused'])
        panels.append(('disagreement', colorize_disagreement(counts)))
    panels.append(('ground truth', colorize(images.ground_truth)))
    return panels


def timeline_png(run: DemoRun) -> bytes:
    """Time series of the run with the phases shaded (see the module docstring)."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 1, figsize=(11, 10), sharex=True)
    spans = _phase_spans(run)
    shades = ['#ffffff', '#fde0dd', '#fa9fb5', '#c6dbef', '#9ecae1', '#e5f5e0']
    for ax in axes:
        for k, (_, start, end) in enumerate(spans):
            ax.axvspan(start, end, color=shades[k % len(shades)], alpha=0.6, lw=0)
    for name, start, end in spans:
        axes[0].text(
            (start + end) / 2, 1.02, name, ha='center', va='bottom', fontsize=9,
            transform=axes[0].get_xaxis_transform(),
        )  # fmt: skip

    t = np.array([f.time_s for f in run.frames])
    for role, color in ROLE_COLORS.items():
        d = [100 * f.disagreement.get(role, np.nan) for f in run.frames]
        axes[0].plot(t, d, '.-', color=color, label=f'{LETTER[role]} vs fused', lw=1)
    ymax = axes[0].get_ylim()[1]
    for role, color in ROLE_COLORS.items():
        hit = [f.time_s for f in run.frames if f.suspected_role == role]
        if hit:
            axes[0].plot(hit, [ymax * 0.95] * len(hit), 'v', color=color, ms=7,
                         label=f'suspected: {LETTER[role]}')  # fmt: skip
    axes[0].set_ylabel('disagreement with\nthe fused mask (%)')
    axes[0].legend(fontsize=8, ncol=3, loc='upper left')

    if run.learner:
        lt = [s['time_s'] for s in run.learner]
        for key, label in (('ce', 'J_CE'), ('fm', 'J_FM'), ('ifm', 'J_IFM')):
            axes[1].plot(lt, [s[key] for s in run.learner], label=label, lw=1)
        axes[1].set_yscale('log')
        twin = axes[1].twinx()
        twin.step(lt, [s['version'] for s in run.learner], 'k--', where='post', lw=1,
                  label='snapshot version')  # fmt: skip
        twin.set_ylabel('A snapshot version')
        twin.legend(fontsize=8, loc='upper right')
    axes[1].set_ylabel('learner losses')
    axes[1].legend(fontsize=8, loc='upper left', ncol=3)

    lat = [np.nan if f.latency_ms is None else f.latency_ms for f in run.frames]
    axes[2].plot(t, lat, '.-', color='#444444', lw=1)
    axes[2].set_ylabel('camera -> fused\nlatency (ms)')

    if run.counters:
        ct = [c['time_s'] for c in run.counters]
        axes[3].plot(ct, [c['skipped'] for c in run.counters], label='skipped (T+S+A)')
        axes[3].plot(ct, [c['lost'] for c in run.counters], label='lost in a queue (T+S+A)')
        axes[3].plot(ct, [c['degraded'] for c in run.counters], label='fused degraded')
        axes[3].legend(fontsize=8, loc='upper left')
    axes[3].set_ylim(bottom=0, top=max(1, axes[3].get_ylim()[1]))  # counts: none below 0
    axes[3].set_ylabel('frames\n(cumulative)')
    axes[3].set_xlabel('seconds since the first phase began')
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png', dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def _phase_spans(run: DemoRun) -> list[tuple[str, float, float]]:
    return [(p.name, *run.phase_times[p.name]) for p in run.phases if p.name in run.phase_times]


# ------------------------------------------------------------------------- the page
CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1100px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td.name, th.name { text-align: left; }
.mosaic { display: grid; grid-template-columns: repeat(4, minmax(0, 1fr)); gap: 6px; }
.mosaic figure { margin: 0; } .mosaic img { width: 100%; image-rendering: pixelated; }
figcaption { font-size: 0.8em; text-align: center; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 12px; font-size: 0.8em; }
.legend span.sw { display: inline-block; width: 0.9em; height: 0.9em; margin-right: 3px;
                  vertical-align: middle; border: 1px solid #888; }
img.wide { max-width: 100%; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; font-size: 0.8em; }
.note { color: #555; font-size: 0.9em; }
"""


def _legend_html() -> str:
    items = [
        f'<span><span class="sw" style="background: rgb{tuple(int(c) for c in color)}">'
        f'</span>{html.escape(name)}</span>'
        for name, color in zip(CLASS_NAMES, np.asarray(TRAIN_COLORS).reshape(-1, 3), strict=True)
    ]
    items.append('<span><span class="sw" style="background: rgb(0, 0, 0)"></span>ignore</span>')
    labels = {'0': 'all networks agree', '1': '1 network disagrees', '2': '2 disagree',
              '3+': '3 disagree', 'ignore': 'no fused decision'}  # fmt: skip
    for key, color in DISAGREEMENT_COLORS.items():
        items.append(
            f'<span><span class="sw" style="background: rgb{color}"></span>'
            f'disagreement: {labels[key]}</span>'
        )
    return '<div class="legend">' + ''.join(items) + '</div>'


def _table(run: DemoRun, numbers: dict) -> str:
    head = ''.join(f'<th colspan="2">{LETTER[s]}</th>' for s in STREAMS)
    sub = ''.join('<th>mIoU</th><th>ratio</th>' for _ in STREAMS)
    rows = []
    for phase in run.phases:
        cells = []
        for stream in STREAMS:
            entry = numbers[phase.name][stream]
            cells.append(f'<td>{format_number(entry["miou"])} %</td>')
            ratio = entry['ratio']
            cells.append(f'<td>{"-" if ratio is None else format_number(ratio) + " %"}</td>')
        rows.append(f'<tr><td class="name">{html.escape(phase.name)}</td>{"".join(cells)}</tr>')
    return (
        f'<table><tr><th class="name" rowspan="2">phase</th>{head}</tr><tr>{sub}</tr>'
        + ''.join(rows)
        + '</table>'
    )


def _detection_table(run: DemoRun, found: dict) -> str:
    rows = []
    for phase in run.phases:
        d = found[phase.name]
        attacked = LETTER.get(phase.target, '-')
        rows.append(
            f'<tr><td class="name">{html.escape(phase.name)}</td><td>{d["frames"]}</td>'
            f'<td>{d["complete"]}</td><td>{d["degraded"]}</td><td>{attacked}</td>'
            f'<td>{d["suspected"]}</td><td>{d["suspected_attacked"] if phase.target else "-"}'
            '</td></tr>'
        )
    return (
        '<table><tr><th class="name">phase</th><th>frames</th><th>3 votes</th>'
        '<th>degraded</th><th>attacked</th><th>a network suspected</th>'
        '<th>the attacked one suspected</th></tr>' + ''.join(rows) + '</table>'
    )


def write_report(run: DemoRun, out: str | Path) -> Path:
    """Write ``out/index.html`` (self-contained), ``out/report.json`` and the PNGs beside
    them (``mosaic-<k>.png`` per phase, ``timeline.png``); returns the page's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    numbers = scores(run)
    found = detection(run)
    timeline = timeline_png(run)
    (out / 'timeline.png').write_bytes(timeline)

    mosaics = []
    for k, phase in enumerate(run.phases):
        if phase.name not in run.images:
            continue
        panels = mosaic_panels(run, phase)
        (out / f'mosaic-{k}.png').write_bytes(_png(_strip([p for _, p in panels])))
        figures = ''.join(
            f'<figure><img src="{_data_uri(_png(image))}" alt="{html.escape(caption)}">'
            f'<figcaption>{html.escape(caption)}</figcaption></figure>'
            for caption, image in panels
        )
        mosaics.append(f'<h3>{html.escape(phase.name)}</h3><div class="mosaic">{figures}</div>')

    nets = ''.join(
        f'<tr><td class="name">{LETTER[role]} ({html.escape(role)})</td>'
        f'<td class="name">{html.escape(str(info.get("arch", "")))}</td>'
        f'<td>{format_number(info.get("val_miou"))} %</td>'
        f'<td class="name">{html.escape(str(info.get("trained", "")))}</td></tr>'
        for role, info in run.networks.items()
    )
    frames_note = (
        f'{len(run.frame_ids)} camera frames, the same in every phase: '
        + ', '.join(html.escape(f) for f in run.frame_ids[:12])
        + (' ...' if len(run.frame_ids) > 12 else '')
    )
    notes = ''.join(f'<li>{html.escape(n)}</li>' for n in run.notes)
    env = html.escape(json.dumps(run.environment, indent=2, default=str))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tsa_ros demo</title><style>{CSS}</style></head>
<body>
<h1>tsa_ros demo: the redundant triplet under attack</h1>
<p>A static teacher T, a static student S and an adaptive student A (a copy of S that the
learner trains online from T's soft labels while pushing its features away from S's) segment
each camera frame; the fusion node majority-votes their masks. The attacker knows T and S
(white box) and perturbs the camera frames with the iterative least-likely class attack.</p>
<h2>mIoU per phase</h2>
<p class="note">{frames_note}. mIoU over those frames against their ground truth; ratio =
mIoU in the phase / mIoU on the clean frames, same network, same frames (eq. 11).</p>
{_table(run, numbers)}
<h2>Attack detection hint and quorum</h2>
{_detection_table(run, found)}
<h2>Mosaics</h2>
<p class="note">One frame per phase; the perturbation is amplified so that &plusmn;&epsilon;
spans black to white (mid-gray: unchanged).</p>
{_legend_html()}
{''.join(mosaics)}
<h2>Over time</h2>
<img class="wide" src="{_data_uri(timeline)}" alt="time series of the run">
<h2>Networks</h2>
<table><tr><th class="name">role</th><th class="name">architecture</th>
<th>mIoU mini val</th><th class="name">training</th></tr>{nets}</table>
<h2>Notes</h2><ul>{notes}</ul>
<h2>Configuration</h2><p class="note">{html.escape(run.command)}</p>
<pre>{html.escape(run.config)}</pre>
<h2>Versions and machine</h2><pre>{env}</pre>
</body></html>
"""
    path = out / 'index.html'
    path.write_text(page)
    summary = {
        'phases': [asdict(p) for p in run.phases],
        'frame_ids': run.frame_ids,
        'scores': numbers,
        'detection': found,
        'networks': run.networks,
        'frames': [asdict(f) for f in run.frames],
        'learner': run.learner,
        'phase_times': run.phase_times,
        'environment': run.environment,
        'notes': run.notes,
        'command': run.command,
    }
    (out / 'report.json').write_text(json.dumps(summary, indent=2, default=str))
    return path


def _strip(images: list[np.ndarray]) -> np.ndarray:
    """Images side by side with a white 4 px gap (the mosaic as one PNG, e.g. for a README)."""
    height = max(i.shape[0] for i in images)
    gap = np.full((height, 4, 3), 255, np.uint8)
    parts = []
    for image in images:
        pad = np.full((height - image.shape[0], image.shape[1], 3), 255, np.uint8)
        parts += [np.concatenate([image, pad]), gap]
    return np.concatenate(parts[:-1], axis=1)
