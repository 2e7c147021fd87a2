"""ei_toolkit.files.model_id: a module's id is the SHA-256 of its state by value, for parameters and buffers of any
shape, 0-d ones included (a scalar temperature or scale), and non-contiguous ones by their values."""

import torch

from ei_toolkit.files import model_id


class _Scaled(torch.nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)
        self.scale = torch.nn.Parameter(torch.tensor(scale))  # 0-d
        self.register_buffer("flag", torch.tensor(True))  # 0-d bool buffer


def test_zero_dimensional_parameters_are_identified_by_value():
    torch.manual_seed(0)
    a = _Scaled(1.0)
    b = _Scaled(1.0)
    b.load_state_dict(a.state_dict())
    assert model_id(a) == model_id(b) and model_id(a).startswith("module:")
    with torch.no_grad():
        b.scale.fill_(2.0)
    assert model_id(a) != model_id(b)


def test_a_non_contiguous_parameter_is_identified_by_its_values():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 4), torch.nn.Linear(3, 4)
    b.load_state_dict(a.state_dict())
    b.weight = torch.nn.Parameter(a.weight.detach().t().contiguous().t())  # same values, transposed strides
    assert not b.weight.is_contiguous() and model_id(a) == model_id(b)
