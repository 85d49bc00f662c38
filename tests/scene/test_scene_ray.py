"""Ray fan-out, local, 2 workers (few and small: starting Ray and its workers costs seconds):
1 vs 2 workers give the same bits, and a worker killed mid-run is replaced and its tiles
retried, with an identical result and every window written once."""
import os
import signal

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")
ray = pytest.importorskip("ray")

from scene.scene_helpers import RRSSRD, lr_transform, read, triplet, write_tif
from sharp.refsr import DEFAULT_CHECKPOINT, load_dsdit
from sharp.scene import super_resolve_scene
from sharp.scene.pool import local_ray_options

pytestmark = pytest.mark.skipif(not (RRSSRD / "val_1st").is_dir(),
                                reason=f"RRSSRD test data not found at {RRSSRD}")
KW = dict(steps=1, tile=96, overlap=32, cog=False)


@pytest.fixture(scope="module")
def cluster():
    # the local Ray a pool starts (niceness, task events, object frees, store size)
    ray.init(include_dashboard=False, log_to_driver=False, **local_ray_options(2))
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    d = tmp_path_factory.mktemp("ray")
    lr, _, ref = triplet()
    return (write_tif(d / "lr.tif", lr[:60, :60], lr_transform()),
            write_tif(d / "ref.tif", ref[:240, :240], lr_transform(0.6)))


def test_one_vs_two_workers_and_a_killed_worker(tmp_path, cluster, scene):
    model = load_dsdit(DEFAULT_CHECKPOINT)
    a, b = scene
    s1 = super_resolve_scene(a, b, tmp_path / "w1.tif", model, workers=1, **KW)
    s2 = super_resolve_scene(a, b, tmp_path / "w2.tif", model, workers=2, **KW)
    one = read(tmp_path / "w1.tif")
    assert s1["tiles"] == s2["tiles"] == 16 and np.array_equal(one, read(tmp_path / "w2.tif"))

    pools, killed = [], []

    def kill_one(done, total, pixels, seconds):
        if done == 2 and not killed:
            pid = pools[0].pids()[0]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    s = super_resolve_scene(a, b, tmp_path / "k.tif", model, workers=2, progress=kill_one,
                            pool_hook=pools.append, **KW)
    assert killed and s["tiles_retried"] >= 1
    assert s["cells_written"] == s["cells"] and s["tiles_run"] == s["tiles"]
    assert np.array_equal(one, read(tmp_path / "k.tif"))


def test_noise_and_batches_on_two_workers(tmp_path, cluster, scene):
    """At temperature 1 (16 tiles, each drawing the position-keyed noise of its window): this
    process and 2 Ray workers give the same bits. Two scenes of a batch share one pool (2
    workers started once) and each equals its single-scene run."""
    from sharp.scene import Pair, super_resolve_scenes
    model = load_dsdit(DEFAULT_CHECKPOINT)
    a, b = scene
    noisy = dict(KW, temperature=1.0, seed=5)
    super_resolve_scene(a, b, tmp_path / "n0.tif", model, workers=0, **noisy)
    super_resolve_scene(a, b, tmp_path / "n2.tif", model, workers=2, **noisy)
    n0 = read(tmp_path / "n0.tif")
    assert np.array_equal(n0, read(tmp_path / "n2.tif"))
    super_resolve_scene(a, b, tmp_path / "plain.tif", model, **KW)
    assert not np.array_equal(n0, read(tmp_path / "plain.tif"))     # the noise did something
    pools = []
    r = super_resolve_scenes([Pair(a, b, tmp_path / "s1.tif"), Pair(a, None, tmp_path / "s2.tif")],
                             model, workers=2, pool_hook=pools.append, **noisy)
    assert len(pools) == 1 and len(r["scenes"]) == 2
    assert np.array_equal(read(tmp_path / "s1.tif"), n0)
    super_resolve_scene(a, None, tmp_path / "lr_only.tif", model, **noisy)
    assert np.array_equal(read(tmp_path / "s2.tif"), read(tmp_path / "lr_only.tif"))


def test_latent_checkpoint_on_two_workers(tmp_path, cluster, scene):
    """A latent-space checkpoint with its VAE (loaded from a file) runs on Ray workers, which
    rebuild the VAE from the bytes they are sent: the same bits as in this process. A VAE that
    is not a diffusers AutoencoderKL is refused before Ray starts; a latent checkpoint without
    a VAE, and a VAE with a pixel checkpoint, before any work."""
    import torch
    diffusers = pytest.importorskip("diffusers", reason="the [latent] extra is not installed")
    from safetensors.torch import save_file

    from sharp.refsr.config import DSDiTConfig
    from sharp.refsr.model import DSDiT
    from sharp.refsr.space import CallableVAE
    from sharp.refsr.vae import load_vae
    from sharp.scene import SceneError

    torch.manual_seed(0)
    ae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(32, 32),
                                 down_block_types=("DownEncoderBlock2D",) * 2,
                                 up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1,
                                 latent_channels=4, norm_num_groups=32)
    save_file({k: v.contiguous() for k, v in ae.state_dict().items()}, str(tmp_path / "vae.safetensors"))
    vae = load_vae(tmp_path / "vae.safetensors")
    cfg = DSDiTConfig(space="latent", latent_channels=4, latent_downscale=2, patch=2, dim=16,
                      depth=1, heads=2, plw_hidden=4, res_scale=1.0, predict="x1")
    model = DSDiT(cfg).eval()
    a, b = scene
    super_resolve_scene(a, b, tmp_path / "l0.tif", model, workers=0, vae=vae, **KW)
    s = super_resolve_scene(a, b, tmp_path / "l2.tif", model, workers=2, vae=vae, **KW)
    assert s["tiles"] == 16
    assert np.array_equal(read(tmp_path / "l0.tif"), read(tmp_path / "l2.tif"))
    other = CallableVAE(vae.encode, vae.decode, 4, 2)
    with pytest.raises(SceneError, match="load the VAE from its file"):
        super_resolve_scene(a, b, tmp_path / "x.tif", model, workers=2, vae=other, **KW)
    with pytest.raises(SceneError, match="latent space: give its VAE"):
        super_resolve_scene(a, b, tmp_path / "x.tif", model, workers=0, **KW)
    with pytest.raises(SceneError, match="pixel space: drop --vae"):
        super_resolve_scene(a, b, tmp_path / "x.tif", load_dsdit(DEFAULT_CHECKPOINT), vae=vae, **KW)
    assert not (tmp_path / "x.tif").exists() and not (tmp_path / "x.tif.partial").exists()
