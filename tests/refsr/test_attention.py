import torch

from sharp.refsr.attention import DecoupledAttention, neighbourhood, neighbourhood_valid


def test_neighbourhood_matches_naive_gather():
    x = torch.randn(2, 5, 6, 3)
    nb = neighbourhood(x, 1)                                    # [B, H, W, 9, D]
    assert nb.shape == (2, 5, 6, 9, 3)
    xp = torch.nn.functional.pad(x, (0, 0, 1, 1, 1, 1))
    for (i, j) in [(0, 0), (2, 3), (4, 5)]:
        k = 0
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                assert torch.equal(nb[:, i, j, k], xp[:, i + 1 + dy, j + 1 + dx])
                k += 1
    valid = neighbourhood_valid(5, 6, 1)
    assert valid.shape == (5, 6, 9)
    assert valid[2, 3].all() and valid[0, 0].sum() == 4        # corner: 2x2 inside


def test_decoupled_attention_shapes_and_lr_ref_isolation():
    torch.manual_seed(0)
    attn = DecoupledAttention(dim=16, heads=2, radius=1)
    x, c_lr, c_ref = (torch.randn(2, 6, 7, 16) for _ in range(3))
    h_lr, h_ref = attn(x, c_lr, c_ref)
    assert h_lr.shape == h_ref.shape == (2, 6, 7, 16)
    # perturbing the Ref leaves the LR branch bit-identical, and vice versa
    h_lr2, h_ref2 = attn(x, c_lr, c_ref + 5 * torch.randn_like(c_ref))
    assert torch.equal(h_lr, h_lr2) and not torch.allclose(h_ref, h_ref2)
    h_lr3, h_ref3 = attn(x, c_lr + 5 * torch.randn_like(c_lr), c_ref)
    assert torch.equal(h_ref, h_ref3) and not torch.allclose(h_lr, h_lr3)
    # no Ref: only the LR branch is computed
    h_lr4, none = attn(x, c_lr, None)
    assert none is None and torch.equal(h_lr4, h_lr)


def test_attention_is_local():
    torch.manual_seed(0)
    attn = DecoupledAttention(dim=8, heads=2, radius=1)
    x, c = torch.randn(1, 8, 8, 8), torch.randn(1, 8, 8, 8)
    h, _ = attn(x, c)
    c2 = c.clone()
    c2[0, 7, 7] += 10.0                                         # far corner token
    h2, _ = attn(x, c2)
    changed = (h - h2).abs().amax(-1)[0] > 0
    assert changed[6:, 6:].any() and not changed[:6].any() and not changed[:, :6].any()


def test_attention_matches_a_naive_gather_implementation():
    """The shifted-slice implementation equals softmax over explicitly gathered neighbours."""
    import math

    from einops import rearrange

    from sharp.refsr.attention import NeighbourhoodAttention

    torch.manual_seed(0)
    att = NeighbourhoodAttention(dim=8, heads=2, radius=1)
    with torch.no_grad():
        att.bias_self.normal_()
        att.bias_cond.normal_()
    x, c = torch.randn(2, 5, 6, 8), torch.randn(2, 5, 6, 8)
    q = rearrange(att.q(x), "b h w (n e) -> b h w n e", n=2)
    k_s, v_s = att.kv_self(x).chunk(2, -1)
    k_c, v_c = att.kv_cond(c).chunk(2, -1)
    keys = torch.cat([neighbourhood(k_s, 1), neighbourhood(k_c, 1)], 3)      # [B,H,W,2K,D]
    vals = torch.cat([neighbourhood(v_s, 1), neighbourhood(v_c, 1)], 3)
    keys = rearrange(keys, "b h w k (n e) -> b h w n k e", n=2)
    vals = rearrange(vals, "b h w k (n e) -> b h w n k e", n=2)
    logits = (q.unsqueeze(-2) * keys).sum(-1) / math.sqrt(4)
    logits = logits + torch.cat([att.bias_self, att.bias_cond], 1)
    valid = torch.cat([neighbourhood_valid(5, 6, 1)] * 2, -1)[:, :, None]
    a = logits.masked_fill(~valid, float("-inf")).softmax(-1)
    naive = att.out(rearrange((a.unsqueeze(-1) * vals).sum(-2), "b h w n e -> b h w (n e)"))
    assert torch.allclose(att(x, c), naive, atol=1e-5)


def test_strips_give_the_same_bits_for_any_strip_size(monkeypatch):
    """Inference runs the attention in strips of query rows with reused buffers (sharp.refsr.
    attention.STRIP_BYTES); the strip size and the buffers must not change a bit, and the
    autograd path (no buffers) must give the same forward values."""
    import sharp.refsr.attention as A

    torch.manual_seed(0)
    att = A.NeighbourhoodAttention(dim=16, heads=2, radius=2)
    with torch.no_grad():
        att.bias_self.normal_()
        att.bias_cond.normal_()
    x, c = torch.randn(2, 13, 11, 16), torch.randn(2, 13, 11, 16)
    results = []
    for strip_bytes in (1, 2 * 11 * 16 * 4 * 3, 2 * 11 * 16 * 4 * 5, 1 << 30):  # rows 1, 3, 5, all
        monkeypatch.setattr(A, "STRIP_BYTES", strip_bytes)
        with torch.no_grad():
            results.append(att(x, c))
        results.append(att(x, c).detach())                     # autograd path
        if strip_bytes == 2 * 11 * 16 * 4 * 3:
            assert A.strip_rows(2, 11, 16, 4) == 3             # 13 rows: strips of 3, 3, 3, 3, 1
    for r in results[1:]:
        assert torch.equal(r, results[0])
    # and the strips carry the gradients (a naive re-derivation is checked above)
    monkeypatch.setattr(A, "STRIP_BYTES", 2 * 11 * 16 * 4 * 3)
    x.requires_grad_(True)
    (att(x, c) ** 2).sum().backward()
    g_strips = x.grad.clone()
    x.grad = None
    monkeypatch.setattr(A, "STRIP_BYTES", 1 << 30)
    (att(x, c) ** 2).sum().backward()
    assert torch.allclose(g_strips, x.grad, rtol=1e-4, atol=1e-5) and g_strips.abs().sum() > 0
