"""A folder's run fits the folder: the recipe's length cut to `folder_epochs` epochs of a small
folder (warm-up and decays at the same fractions), the recipe's own length for a large one, and
the run's expected time said once its first steps are timed, with the key that shortens it."""

import importlib.util
import os
import re

import ml_collections
import pytest

from resnet_jax import config as config_lib
from resnet_jax.engine import trainer
from tests.fake_folders import write_class_folders

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ("cat", "dog", "owl")


def load_config(name, arg=None):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config() if arg is None else module.get_config(arg)


@pytest.fixture(scope="module")
def folder_180(tmp_path_factory):
    """180 images of 3 classes, no test split: 0.2 held out, the rest (~145) to train on."""
    root = tmp_path_factory.mktemp("own")
    write_class_folders(str(root / "flowers"), dict.fromkeys(CLASSES, 60), side=8)
    return str(root)


def test_readme_from_scratch_command_trains_25_epochs_of_a_small_folder(folder_180):
    c = load_config("default")
    c.dataset, c.data_dir = f"folder:{folder_180}/flowers", f"{folder_180}/data"
    run = config_lib.resolve_run(c)
    r, n = run.c, run.c.num_train_examples
    assert 120 <= n <= 160 and r.batch_size == 32 and r.steps_per_epoch == n // 32
    # 25 epochs instead of the recipe's 3,000 steps; warm-up 50 of 3,000 kept as a fraction.
    assert r.num_train_steps == 25 * (n // 32)
    assert r.warmup_steps == round(50 * r.num_train_steps / 3000)
    assert r.length_rule.startswith(
        f"num_train_steps {r.num_train_steps}: 25 epochs (folder_epochs) of the {n} training "
        f"images at {n // 32} step(s) of 32 each, where the recipe's 3000 steps would be "
        f"{3000 * 32 / n:.0f} epochs;"
    )
    assert r.length_rule in run.notes and run.problems == ()
    # --config.folder_epochs=0 keeps the recipe's length; a shorter num_train_steps stands.
    c.folder_epochs = 0
    assert config_lib.resolve_config(c).num_train_steps == 3000
    c.folder_epochs, c.num_train_steps = 25, 40
    r = config_lib.resolve_config(c)
    assert r.num_train_steps == 40 and r.get("length_rule") is None


def test_readme_fine_tuning_command_cuts_bits_500_steps_to_25_epochs(folder_180, tmp_path):
    from resnet_jax import pretrained
    from tests.test_pretrained_finetune import tiny_state_dict

    weights = str(tmp_path / "w.safetensors")
    pretrained.save_state_dict(tiny_state_dict(1000), weights)
    c = load_config("finetune", "folder,resnet50")
    c.dataset, c.data_dir = f"folder:{folder_180}/flowers", f"{folder_180}/data"
    c.init_from = weights
    r = config_lib.resolve_config(c)
    # ~145 training images fill a batch of 128 (1 step per epoch): 25 steps, not BiT's 500;
    # BiT's warm-up (100 of 500) and decays (30/60/90%) at the same fractions.
    assert (r.batch_size, r.steps_per_epoch, r.num_train_steps) == (128, 1, 25)
    assert (r.warmup_steps, r.lr_decay_steps) == (5, (8, 15, 22))
    schedule, _ = config_lib.build_optimizer(r)
    lr = [float(schedule(s)) for s in (5, 7, 8, 15, 22)]
    assert lr == pytest.approx([0.00075, 0.00075, 7.5e-5, 7.5e-6, 7.5e-7])


def _recipe(steps, per_epoch, batch, warmup, decays, bit=False):
    return ml_collections.ConfigDict(
        dict(
            num_train_steps=steps,
            steps_per_epoch=per_epoch,
            batch_size=batch,
            warmup_steps=warmup,
            lr_decay_steps=decays,
            bit_hyperrule=bit,
            folder_epochs=25.0,
        )
    )


@pytest.mark.parametrize(
    "num_train, recipe, steps",
    [
        (3_840, _recipe(3000, 120, 32, 50, ()), 3000),  # from scratch: 25 x 120 = 3,000
        (3_800, _recipe(3000, 118, 32, 50, ()), 2950),  # one image short of 120 steps/epoch ...
        (10_240, _recipe(500, 20, 512, 100, (150, 300, 450), bit=True), 500),  # BiT: 25 x 20
        (8_192, _recipe(500, 16, 512, 100, (150, 300, 450), bit=True), 400),
        # BiT's lengths from 20k examples up follow the data: never cut, however many epochs.
        (20_000, _recipe(10_000, 39, 512, 500, (3000, 6000, 9000), bit=True), 10_000),
    ],
)
def test_the_recipe_stands_for_a_large_folder(num_train, recipe, steps):
    config_lib.fit_length_to_folder(recipe, num_train)
    assert recipe.num_train_steps == steps
    if steps < 3000 and not recipe.bit_hyperrule:
        assert recipe.warmup_steps == 49  # 50 x 2950 / 3000, rounded
    if recipe.bit_hyperrule and steps == 400:
        assert (recipe.warmup_steps, recipe.lr_decay_steps) == (80, (120, 240, 360))


@pytest.mark.parametrize(
    "seconds, text", [(45, "45 s"), (89.4, "89 s"), (250, "4 min"), (8040, "2 h 14 min")]
)
def test_duration_text(seconds, text):
    assert trainer.duration_text(seconds) == text


def test_expected_time_line_names_the_time_the_rate_and_the_key():
    assert trainer.expected_time_line(480, 2.1, 500) == (
        "expected time: about 4 min for the 480 steps left, at the 2.1 steps/s measured on this "
        "machine (evaluation and checkpoints aside); --config.num_train_steps=N (now 500) "
        "shortens it"
    )


def test_the_run_says_its_expected_time_once_after_its_first_timed_steps(
    folder_180, tmp_path, capsys, monkeypatch
):
    # The thresholds scaled down to a run of seconds: after 4 timed steps, whatever is left.
    monkeypatch.setattr(trainer, "ANNOUNCE_AFTER_STEPS", 4)
    monkeypatch.setattr(trainer, "ANNOUNCE_MIN_LEFT_S", 0.0)
    c = config_lib.default_config()
    c.update(
        dict(
            dataset=f"folder:{folder_180}/flowers",
            data_dir=f"{folder_180}/data",
            batch_size=16,
            num_train_steps=10,
            log_every_steps=5,
            checkpoint_every_steps=0,
            augment="none",
        )
    )
    c.model_overrides = {"stage_sizes": (1, 1, 1), "widths": (4, 8, 16), "stem_width": 4}
    trainer.train_and_evaluate(c, str(tmp_path / "run"))
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("expected time")]
    # Step 1 compiles and is not timed; steps 2-5 are: said after step 5, 5 steps left.
    assert len(lines) == 1, lines
    m = re.fullmatch(
        r"expected time: about (\d+) s for the 5 steps left, at the ([\d.e+]+) steps/s measured "
        r"on this machine \(evaluation and checkpoints aside\); --config.num_train_steps=N "
        r"\(now 10\) shortens it",
        lines[0],
    )
    # The rate is printed to 3 digits: the seconds agree with it to within one.
    assert m and float(m[2]) > 0 and abs(int(m[1]) - 5 / float(m[2])) <= 1, lines[0]
