import torch
import torch.nn.functional as F

from tests.helpers import rel_err


def test_chunked_loss_equals_full_cross_entropy_and_its_gradients(tiny_model):
    ids = torch.randint(0, 100, (2, 57))
    labels = torch.randint(0, 100, (2, 57))
    labels[0, :5] = -100  # ignored positions do not count
    tiny_model.loss_chunk_tokens = 10  # many chunks, the last one partial
    loss = tiny_model(ids, labels=labels).loss
    loss.backward()
    g_chunked = {n: p.grad.clone() for n, p in tiny_model.named_parameters()}
    tiny_model.zero_grad()
    logits = tiny_model(ids).logits
    ref = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
    ref.backward()
    assert abs(loss.item() - ref.item()) < 1e-5 * ref.item()
    for n, p in tiny_model.named_parameters():
        assert rel_err(g_chunked[n], p.grad) < 1e-5, n


def test_logits_not_returned_with_labels(tiny_model):
    out = tiny_model(torch.randint(0, 100, (1, 9)), labels=torch.randint(0, 100, (1, 9)))
    assert out.logits is None and out.loss.ndim == 0


def test_gradient_checkpointing_gives_the_same_gradients_with_a_state(tiny_model):
    ids = torch.randint(0, 100, (2, 40))
    labels = torch.randint(0, 100, (2, 40))
    with torch.no_grad():
        state = tiny_model(torch.randint(0, 100, (2, 13))).state
    grads = []
    for on in (False, True):
        tiny_model.zero_grad()
        tiny_model.gradient_checkpointing = on
        s = state.map(lambda t: t.clone().requires_grad_())
        out = tiny_model(ids, state=s, labels=labels)
        (out.loss + sum(l.ssm.sum() * 1e-3 for l in out.state.layers)).backward()
        grads.append(
            (
                {n: p.grad.clone() for n, p in tiny_model.named_parameters()},
                [l.ssm.grad.clone() for l in s.layers] + [l.conv.grad.clone() for l in s.layers],
            )
        )
    for n in grads[0][0]:
        assert rel_err(grads[1][0][n], grads[0][0][n]) < 1e-6, n
    for a, b in zip(grads[1][1], grads[0][1], strict=True):
        assert rel_err(a, b) < 1e-6
