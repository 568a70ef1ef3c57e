"""After training: the authors' short flags, evaluation from the checkpoint alone (shards or a JPEG folder, flip
TTA), prediction, export (ONNX, TorchScript, ExportedProgram), CBAM attention maps with Grad-CAM, fine-tuning."""
import pytest

from training import config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The smallest DATA folder parse_args accepts (it only checks that manifest.json exists)."""
    folder = tmp_path_factory.mktemp("data")
    (folder / "manifest.json").write_text("{}")
    return str(folder)


def test_the_authors_short_flags_are_aliases(data_dir):
    short = config.parse_args(["-a", "resnet", "-j", "3", "-b", "64", "-p", "7", "--learning-rate", "0.2",
                               "--wd", "5e-5", data_dir])
    long = config.parse_args(["--arch", "resnet", "--workers", "3", "--batch-size", "64", "--print-freq", "7",
                              "--lr", "0.2", "--weight-decay", "5e-5", data_dir])
    assert vars(short) == vars(long)
    assert (short.workers, short.batch_size, short.print_freq, short.lr, short.weight_decay) == (3, 64, 7, 0.2, 5e-5)
