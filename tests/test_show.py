import cv2
import pytest
import torch

from flowssl.cli import main
from flowssl.show import project_to_rgb
from pretrain.data.synthetic import write_cityscapes_layout
from pretrain.models import ResNetEncoder

from .conftest import REPO


def test_pca_projection_separates_regions():
    feats = torch.zeros(16, 8, 8)
    feats[:, :, :4] = torch.randn(16, 1, 1)
    feats[:, :, 4:] = torch.randn(16, 1, 1)
    rgb = project_to_rgb(feats, "pca")
    assert rgb.shape == (3, 8, 8) and 0 <= rgb.min() and rgb.max() <= 1
    assert torch.allclose(rgb[:, :, 0], rgb[:, :, 3]) and not torch.allclose(rgb[:, 0, 0], rgb[:, 0, 7])
    assert project_to_rgb(feats, "random").shape == (3, 8, 8)


def test_show_embeddings_of_the_narrow_encoder(tmp_path):
    image = tmp_path / "i.png"
    cv2.imwrite(str(image), (torch.rand(64, 96, 3) * 255).byte().numpy())
    enc = ResNetEncoder("resnet10n", 8)
    torch.save({"encoder": enc.state_dict(), "meta": {"method": "rand_init", **enc.meta}}, tmp_path / "c.pth")
    for stage in ("layer1", "layer4"):  # 16 and 128 channels
        assert main(["show", "embeddings", str(tmp_path / "c.pth"), str(image), "--out", str(tmp_path / "e.png"),
                     "--stage", stage]) == 0
        assert cv2.imread(str(tmp_path / "e.png")).shape == (64, 192, 3)


def test_show_embeddings_and_predictions(tmp_path, capsys):
    root = write_cityscapes_layout(tmp_path / "syn", videos={"train": 1, "val": 1}, frames_per_video=2)
    image = next((root / "leftImg8bit" / "val").rglob("*.png"))
    enc = ResNetEncoder("resnet14", 8)
    torch.save({"encoder": enc.state_dict(), "meta": {"method": "rand_init", **enc.meta}}, tmp_path / "c.pth")
    assert main(["show", "embeddings", str(tmp_path / "c.pth"), str(image), "--out", str(tmp_path / "e.png")]) == 0
    assert cv2.imread(str(tmp_path / "e.png")).shape == (128, 512, 3)
    assert main(["show", "embeddings", str(tmp_path / "nope.pth"), str(image), "--out", str(tmp_path / "x.png")]) == 2

    pytest.importorskip("mmseg")
    from mmseg_plugin.runner import load_cfg, run_train

    config = REPO / "configs/mmseg/deeplabv1_flowssl-r14-frozen_1xb4-300_synthetic-64x128.py"
    opts = {"train_cfg.max_iters": 1, "train_cfg.val_interval": 1, "param_scheduler.0.end": 1,
            "default_hooks.checkpoint.interval": 1,
            **{f"{s}_dataloader.dataset.data_root": str(root) for s in ("train", "val", "test")}}
    cfg = load_cfg(config, tmp_path / "w", str(tmp_path / "c.pth"), opts)
    run_train(cfg)
    assert main(["show", "predictions", str(config), str(tmp_path / "w" / "iter_1.pth"), str(image),
                 "--out", str(tmp_path / "p.png")]) == 0
    assert cv2.imread(str(tmp_path / "p.png")).shape == (128, 512, 3)


def test_compared_checkpoints_share_one_pca_basis(tmp_path):
    """The same feature vector gets the same colour in every picture: two "checkpoints" whose frames
    hold the same vectors in swapped regions get swapped colours."""
    from flowssl.show import compare_embeddings, label_colours, write_panel

    g = torch.Generator().manual_seed(0)
    u, v, z = (torch.randn(16, 1, 1, generator=g) for _ in range(3))
    a, b = torch.zeros(16, 8, 12), torch.zeros(16, 8, 12)
    a[:, :, :4], a[:, :, 4:8], a[:, :, 8:] = u, v, z
    b[:, :, :4], b[:, :, 4:8], b[:, :, 8:] = v, u, z
    pics = compare_embeddings({"a": a, "b": b})
    same = lambda x, y: torch.allclose(x, y, atol=1e-5)  # noqa: E731
    assert same(pics["a"][:, :, 0], pics["b"][:, :, 4]) and same(pics["a"][:, :, 4], pics["b"][:, :, 0])
    assert same(pics["a"][:, :, 8], pics["b"][:, :, 8])
    assert not torch.allclose(pics["a"][:, :, 0], pics["a"][:, :, 4])
    with pytest.raises(ValueError, match="one shape"):
        compare_embeddings({"a": a, "c": torch.zeros(8, 8, 12)})
    labels = label_colours(torch.tensor([[0, 1], [255, 2]]), ((0, 0, 0), (255, 0, 0), (0, 255, 0)))
    assert labels[:, 0, 1].tolist() == [1.0, 0.0, 0.0] and labels[:, 1, 0].tolist() == [0.0, 0.0, 0.0]
    out = write_panel({"a": pics["a"], "b": pics["b"], "c": pics["a"]}, tmp_path / "p.png", columns=2)
    assert cv2.imread(str(out)).shape == (16, 24, 3) and not list(tmp_path.glob(".*"))
