import os

import pytest
import yaml

from raysegment.config import ConfigError, load_config

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs")


@pytest.mark.parametrize("name", ["PP-LiteSeg-T", "PP-LiteSeg-B"])
def test_shipped_configs_load_and_name_their_model(name):
    cfg = load_config(os.path.join(CONFIGS, f"{name}.yaml"))
    assert cfg.Global.model == name
    assert cfg.Train.num_classes == 19


def test_overrides_are_typed():
    cfg = load_config(
        os.path.join(CONFIGS, "PP-LiteSeg-T.yaml"),
        [
            "Train.num_classes=11",
            "Train.learning_rate=1e-3",  # YAML 1.1 reads this as a string; a float field takes it
            "Train.batch_size=8",
            "CheckDataset.split.enable=true",
            "CheckDataset.split.train_percent=80",
            "Predict.target_size=[512, 256]",
            "Global.output=2024",  # a string field keeps the text, not the int 2024
            "Global.device=gpu:0,1",
            "Ray.cpus_per_worker=2",  # an int where a float is wanted is fine
            "Predict.kernel_option.run_mode=paddle",
            "Train.pretrain_weight_path=null",
        ],
    )
    assert cfg.Train.num_classes == 11 and cfg.Train.batch_size == 8
    assert cfg.Train.learning_rate == pytest.approx(0.001)
    assert cfg.CheckDataset.split.enable is True and cfg.CheckDataset.split.train_percent == 80
    assert cfg.Predict.target_size == [512, 256]
    assert cfg.Global.output == "2024" and cfg.Global.device == "gpu:0,1"
    assert cfg.Ray.cpus_per_worker == 2.0 and isinstance(cfg.Ray.cpus_per_worker, float)
    assert cfg.Predict.kernel_option.run_mode == "paddle"
    assert cfg.Train.pretrain_weight_path is None


def test_later_override_wins_and_defaults_fill_missing_sections(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("Global:\n  model: PP-LiteSeg-B\n")
    cfg = load_config(str(path), ["Train.batch_size=2", "Train.batch_size=3"])
    assert cfg.Train.batch_size == 3
    assert cfg.Ray.num_workers is None and cfg.Predict.batch_size == 1  # null: sized to the cluster at start


@pytest.mark.parametrize(
    "override,message",
    [
        ("Train.num_clases=3", "Train: unknown key 'num_clases'; did you mean 'num_classes'? valid keys: num_classes"),
        ("Trian.batch_size=1", "unknown section 'Trian'; did you mean 'Train'? valid sections: Global"),
        ("Train.zzz=1", "Train: unknown key 'zzz'; valid keys: num_classes"),  # nothing close: no guess
        ("Train.batch_size=abc", "Train.batch_size: expected int, got 'abc'"),
        ("Train.batch_size=2.5", "Train.batch_size: expected int, got 2.5"),
        ("Train.batch_size=0", "Train.batch_size: 0 is below the minimum 1"),
        ("Train.learning_rate=fast", "Train.learning_rate: expected float"),
        ("Ray.use_gpu=maybe", "Ray.use_gpu: expected bool, got 'maybe'"),
        ("Global.mode=fly", "Global.mode: 'fly' is not one of check_dataset, train"),
        ("Global.model=PP-LiteSeg-X", "Global.model: unknown model 'PP-LiteSeg-X'; valid names:"),
        ("Predict.target_size=0", "Predict.target_size: expected -1, a positive int or [width, height]"),
        ("Predict.target_size=[1, 2, 3]", "Predict.target_size"),
        ("CheckDataset.convert.src_dataset_type=COCO", "src_dataset_type: 'COCO' is not one of null, LabelMe, VOC"),
        ("CheckDataset.split=1", "CheckDataset.split is a section"),
        ("Train.batch_size.x=1", "Train.batch_size is a value, not a section"),
        ("Train.class_weights=inverse", "Train.class_weights: expected null, 'median_frequency' or one non-negative weight per class"),
        ("Train.class_weights=[1, -0.5]", "Train.class_weights: expected null, 'median_frequency'"),
        ("Train.lovasz_weight=-0.2", "Train.lovasz_weight: -0.2 is below the minimum 0.0"),
        ("Train.eval_target_size=[960]", "Train.eval_target_size: expected null or [width, height] of positive ints"),
        ("Train", "is not of the form Section.key=value"),
        ("Train=3", "must name a section and a key"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(os.path.join(CONFIGS, "PP-LiteSeg-T.yaml"), [override])
    assert message in str(err.value)


@pytest.mark.parametrize(
    "text,message",
    [
        ("Train:\n  batch_size: many\n", "Train.batch_size: expected int, got 'many'"),
        ("Train:\n  epochs: 3\n", "Train: unknown key 'epochs'"),
        ("Extra:\n  a: 1\n", "unknown section 'Extra'"),
        ("Train: 3\n", "Train must be a mapping"),
        ("- a\n- b\n", "must hold a mapping of sections"),
        ("Train: [\n", "is not valid YAML"),
    ],
)
def test_bad_yaml_files_name_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert message in str(err.value)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("no/such/config.yaml")


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = load_config(os.path.join(CONFIGS, "PP-LiteSeg-T.yaml"), ["Train.num_classes=11"])
    path = tmp_path / "resolved.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(str(path)) == cfg
    assert yaml.safe_load(path.read_text())["Train"]["num_classes"] == 11


def test_engine_keys_are_checked_by_name():
    cfg = load_config(None, ["Predict.engine=hpi", "Predict.use_hpip=true", "Predict.hpi_config.backend=openvino",
                             "Predict.hpi_config.backend_config.precision=bf16"])
    spec = cfg.Predict.engine_spec(threads=2)
    assert (spec.engine, spec.precision, spec.cpu_threads) == ("openvino", "bf16", 2)
    for override, match in [("Predict.engine=tensorrt", "Predict.engine: 'tensorrt' is not one of"),
                            ("Predict.engine_config.trt_fp16=true", "engine_config.*trt_fp16"),
                            ("Predict.engine_config.precision=int4", "Predict.engine_config.precision: 'int4' is not one of"),
                            ("Predict.engine_config.precision=int8", "precision int8 needs engine_config.calibration_images")]:
        with pytest.raises(ConfigError, match=match):
            load_config(None, [override])
    with pytest.raises(ConfigError, match="Predict engine keys: run_mode 'mkldnn' is a Paddle mode; engine 'onnxruntime'"):
        load_config(None, ["Predict.engine=onnxruntime", "Predict.kernel_option.run_mode=mkldnn"])
