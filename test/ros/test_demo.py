"""`tsa demo --quick` end to end (real graph, real DDS), and its report in a real browser."""

import json
import shutil
import subprocess
import sys

import pytest

pytest.importorskip('rclpy')

PHASES = ['clean', 'S-AE eps=1', 'S-AE eps=10', 'T-AE eps=10']
CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
CHROMEDRIVER = shutil.which('chromedriver')


@pytest.fixture(scope='module')
def demo_out(tmp_path_factory, weights_key_file, module_ros_env):
    """One quick demo (tiny world, networks trained a few steps), shared by the tests."""
    root = tmp_path_factory.mktemp('demo')
    command = [sys.executable, '-m', 'tsa_ros.cli', 'demo', '--quick', '--out', str(root / 'out')]
    command += ['--data', str(root / 'data'), '--runs', str(root / 'runs')]
    done = subprocess.run(command, env=module_ros_env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert 'tsa demo: report:' in done.stdout
    return root / 'out'


def test_the_quick_demo_scores_every_phase_on_the_same_frames(demo_out):
    report = json.loads((demo_out / 'report.json').read_text())
    assert [p['name'] for p in report['phases']] == PHASES
    assert len(report['frame_ids']) == 2
    for phase in PHASES:
        frames = [f for f in report['frames'] if f['phase'] == phase]
        assert [f['index'] for f in frames] == [0, 1], phase
        assert all(sorted(f['roles']) == ['adaptive', 'student', 'teacher'] for f in frames)
        for stream in ('teacher', 'student', 'adaptive', 'fused'):
            entry = report['scores'][phase][stream]
            assert entry['frames'] == 2 and entry['miou'] is not None, (phase, stream)
    # The clean phase is the reference of every ratio.
    assert all(report['scores']['clean'][s]['ratio'] == 100.0 for s in report['scores']['clean'])
    assert report['learner'], 'no learner status was heard'
    assert set(report['phase_times']) == set(PHASES)
    for k in range(len(PHASES)):
        assert (demo_out / f'mosaic-{k}.png').stat().st_size > 1000
    assert (demo_out / 'timeline.png').stat().st_size > 1000


def test_the_demo_recording_reads_back_with_ros2_schemas(demo_out):
    from mcap.reader import make_reader

    (path,) = (demo_out / 'recording').glob('*.mcap')
    with path.open('rb') as f:
        reader = make_reader(f)
        summary = reader.get_summary()
        schemas = {s.id: s for s in summary.schemas.values()}
        channels = {c.topic: schemas[c.schema_id] for c in summary.channels.values()}
        counts = summary.statistics.channel_message_counts
        by_topic = {c.topic: counts.get(c.id, 0) for c in summary.channels.values()}
    assert channels['/tsa/fused/segmentation'].name == 'tsa_msgs/msg/FusedSegmentation'
    assert channels['/camera/image_raw'].encoding == 'ros2msg'
    assert by_topic['/tsa/fused/segmentation'] >= 2 * len(PHASES)
    assert by_topic['/tsa/learner/status'] >= 1


@pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason='needs Debian chromium and chromium-driver (.ci/run installs them)',
)
def test_the_report_opens_in_a_real_browser(demo_out):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--window-size=1200,900',
    ):
        options.add_argument(flag)
    options.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        driver.get((demo_out / 'index.html').resolve().as_uri())
        images = driver.execute_script(
            'return Array.from(document.images).map('
            'i => [i.alt, i.complete, i.naturalWidth, i.getBoundingClientRect().right])'
        )
        assert len(images) >= 4 * 8 + 1  # mosaics of every phase and the time series
        broken = [alt for alt, complete, width, _ in images if not (complete and width > 0)]
        assert not broken, f'images that did not load: {broken}'
        page_width = driver.execute_script('return document.documentElement.clientWidth')
        overflow = driver.execute_script(
            'return document.documentElement.scrollWidth > document.documentElement.clientWidth'
        )
        assert not overflow, 'the page scrolls sideways'
        assert all(right <= page_width + 1 for *_, right in images), 'an image overflows'
        errors = [e for e in driver.get_log('browser') if e['level'] == 'SEVERE']
        assert not errors, errors
        assert 'tsa_ros demo' in driver.title
        driver.save_screenshot(str(demo_out / 'screenshot.png'))
    finally:
        driver.quit()
