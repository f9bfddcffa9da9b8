"""AE sets on disk (``tsa attack``) and the robustness tables (``tsa eval``)."""

import csv
import io
import json

import numpy as np
import pytest
import torch

from tsa_ros.cli import main
from tsa_ros.data.cityscapes import CityscapesLayout, LabeledDataset, read_label, read_rgb
from tsa_ros.experiments import evaluate, make_ae_set, ratio_table
from tsa_ros.metrics import ConfusionMatrix
from tsa_ros.models import ModelConfig, build_model, save_checkpoint

SIZE = (64, 128)


@pytest.fixture(scope='module')
def nets(tmp_path_factory):
    """Tiny random T (DeepLabV3+ ResNet-18), S and A (ERFNet) checkpoints."""
    folder = tmp_path_factory.mktemp('nets')
    configs = {
        'T': ModelConfig('deeplabv3plus', input_size=SIZE, backbone='resnet18'),
        'S': ModelConfig('erfnet', input_size=SIZE),
        'A': ModelConfig('erfnet', input_size=SIZE),
    }
    paths = {}
    for seed, (name, config) in enumerate(configs.items()):
        torch.manual_seed(seed)
        paths[name] = save_checkpoint(folder / f'{name}.pt', build_model(config))
    return paths


@pytest.fixture(scope='module')
def sets(tiny_root, nets, tmp_path_factory):
    """clean and T-AE-1 / S-AE-2 sets of minival, written by the CLI."""
    folder = tmp_path_factory.mktemp('sets')
    roots = {}
    for name, ckpt, eps in (('clean', 'S', 0), ('T-AE-1', 'T', 1), ('S-AE-2', 'S', 2)):
        roots[name] = folder / name
        argv = ['attack', '--root', str(tiny_root), '--split', 'minival', '--quiet']
        argv += ['--checkpoint', str(nets[ckpt]), '--epsilon', str(eps), '--out', str(roots[name])]
        assert main([*argv, '--device', 'cpu']) == 0
    return roots


def test_attack_layout_and_bounds(tiny_root, sets):
    source = LabeledDataset(tiny_root, 'minival')
    clean = LabeledDataset(sets['clean'], 'minival')
    assert len(clean) == len(source) and clean.frames == source.frames
    for name, eps in (('clean', 0), ('T-AE-1', 1), ('S-AE-2', 2)):
        root = sets[name]
        manifest = json.loads((root / 'tsa_synth.json').read_text())
        ae = manifest['tsa_ae']
        assert ae['epsilon'] == eps and ae['size'] == list(SIZE)
        assert ae['iterations'] == {0: 0, 1: 1, 2: 2}[eps]
        assert len(ae['checkpoint']['sha256']) == 64
        layout = CityscapesLayout(root)
        dataset = LabeledDataset(root, 'minival')
        for index, fid in enumerate(dataset.frames):
            image = read_rgb(layout.image(dataset.folder, fid))
            assert image.shape == (*SIZE, 3)
            assert read_label(layout.label(dataset.folder, fid, 'labelTrainIds')).shape == SIZE
            adv, label = dataset[index]
            ref_image, ref_label = source.__class__(tiny_root, 'minival', SIZE)[index]
            assert torch.equal(label, ref_label)  # labels = nearest-resized clean labels
            assert torch.equal(adv, adv.round())
            assert (adv - ref_image).abs().max() <= eps
        assert ae['linf_max'] <= eps
    # The attack changes something; the clean set is the resized source, bit for bit.
    assert not torch.equal(LabeledDataset(sets['S-AE-2'], 'minival')[0][0], clean[0][0])
    assert torch.equal(clean[0][0], LabeledDataset(tiny_root, 'minival', SIZE)[0][0])


def test_attack_is_deterministic_and_refuses_overwrite(tiny_root, nets, sets, tmp_path):
    summary = make_ae_set(
        tiny_root, 'minival', nets['T'], 1, tmp_path / 'again', batch_size=3, progress=False
    )
    assert summary['linf_ok'] and summary['integer_valued']
    first = LabeledDataset(sets['T-AE-1'], 'minival')
    again = LabeledDataset(tmp_path / 'again', 'minival')
    for index in range(len(first)):
        assert torch.equal(first[index][0], again[index][0])
    with pytest.raises(FileExistsError):
        make_ae_set(tiny_root, 'minival', nets['T'], 1, tmp_path / 'again', progress=False)
    # A clean set needs no network, only a size; it equals the CLI's clean set.
    make_ae_set(tiny_root, 'minival', None, 0, tmp_path / 'clean', SIZE, progress=False)
    ours, cli = (
        LabeledDataset(tmp_path / 'clean', 'minival'),
        LabeledDataset(sets['clean'], 'minival'),
    )
    assert all(torch.equal(ours[i][0], cli[i][0]) for i in range(len(ours)))


def test_eval_cli_table(nets, sets, tmp_path, capsys):
    out = tmp_path / 'eval'
    argv = ['eval', '--split', 'minival', '--fusion', '--out', str(out), '--device', 'cpu']
    for name, path in nets.items():
        argv += ['--model', f'{name}={path}']
    for name in ('S-AE-2', 'T-AE-1', 'clean'):  # unordered on purpose
        argv += ['--set', f'{name}={sets[name]}']
    assert main(argv) == 0
    results = json.loads((out / 'results.json').read_text())
    assert results['rows'] == ['T', 'S', 'A', 'majority', 'posterior']
    assert results['table'] == 1

    rows = list(csv.reader(io.StringIO((out / 'table.csv').read_text())))
    assert rows[0] == ['network', 'metric', 'clean', 'T-AE-1', 'S-AE-2']
    ratios = {r[0]: r[2:] for r in rows[1:] if r[1] == 'miou_ratio_pct'}
    mious = {r[0]: r[2:] for r in rows[1:] if r[1] == 'miou_pct'}
    assert list(ratios) == results['rows'] and list(mious) == results['rows']

    # Cells equal a direct confusion-matrix computation.
    from tsa_ros.models import load_checkpoint

    student, _ = load_checkpoint(nets['S'])
    direct = {}
    for name in ('clean', 'T-AE-1'):
        cm = ConfusionMatrix()
        for image, label in LabeledDataset(sets[name], 'minival'):
            cm.update(student.predict(image[None]).numpy(), label[None].numpy())
        direct[name] = cm.miou()
    assert float(mious['S'][0]) == pytest.approx(100 * direct['clean'])
    assert float(mious['S'][1]) == pytest.approx(100 * direct['T-AE-1'])
    assert float(ratios['S'][1]) == pytest.approx(100 * direct['T-AE-1'] / direct['clean'])
    for row in results['rows']:
        assert float(ratios[row][0]) == pytest.approx(100.0)
    # One schema with the live evaluator: a cell is a stream entry of build_report.
    from tsa_ros.evaluation import build_report

    entry = build_report({'S': cm}, frames=1, missing={})['streams']['S']
    cell = results['results']['S']['T-AE-1']
    assert set(cell) == set(entry) and cell['miou'] == pytest.approx(direct['T-AE-1'])
    assert set(cell['iou']) == set(entry['iou'])  # by class name

    markdown = (out / 'table.md').read_text()
    assert markdown.startswith('# Table 1: mini validation set')
    assert '| network | no AE (ε=0) | T-AE ε=1 | S-AE-2 |' in markdown
    assert '| majority | **100.0 %** |' in markdown
    assert 'Table 1' in capsys.readouterr().out


def test_ratio_table_bold_and_order():
    def cell(miou):
        return {'miou': miou}

    results = {
        'rows': ['T', 'S'],
        'columns': ['S-AE-10', 'clean', 'T-AE-1', 'extra'],
        'results': {
            'T': {'clean': cell(0.5), 'T-AE-1': cell(0.1), 'S-AE-10': cell(0.4), 'extra': cell(0)},
            'S': {
                'clean': cell(0.0),
                'T-AE-1': cell(0.0),
                'S-AE-10': cell(None),
                'extra': cell(0),
            },
        },
    }
    markdown, table = ratio_table(results)
    assert '| T | **100.0 %** | 20.0 % | **80.0 %** | 0.0 % |' in markdown
    assert '| S | n/a | n/a | n/a | n/a |' in markdown
    assert table.splitlines()[0] == 'network,metric,clean,T-AE-1,S-AE-10,extra'


def test_evaluate_rejects_bad_input(tiny_root):
    model = build_model(ModelConfig('erfnet', input_size=SIZE))
    dataset = LabeledDataset(tiny_root, 'minival', SIZE)
    with pytest.raises(ValueError, match='fusion needs'):
        evaluate({'S': model}, {'clean': dataset}, fusion=True)
    one = evaluate({'S': model}, {'clean': dataset}, batch_size=8)
    assert np.isfinite(one['results']['S']['clean']['miou'])


def test_cli_errors_are_one_line(nets, tmp_path, capsys):
    argv = ['eval', '--model', f'S={nets["S"]}', '--set', f'clean={tmp_path / "nope"}']
    assert main([*argv, '--out', str(tmp_path / 'o')]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and "set 'clean'" in err and 'does not exist' in err
    assert main([*argv[:3], '--set', 'clean', '--out', str(tmp_path / 'o')]) == 2
    assert 'NAME=PATH' in capsys.readouterr().err
    assert main(['attack', '--root', str(tmp_path), '--epsilon', '1', '--out', 'x']) == 2
    assert '--checkpoint is required' in capsys.readouterr().err
