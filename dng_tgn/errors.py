"""Errors a user can act on. Each names the offending layer, parameter or file."""


class DNGError(ValueError):
    """Base class: every dng_tgn input error is also a ValueError."""


class UnsupportedLayerError(DNGError):
    def __init__(self, layer: str, position: str, hint: str = ""):
        self.layer, self.position = layer, position
        msg = f"unsupported layer {layer} at position '{position}'"
        super().__init__(msg + (f": {hint}" if hint else ""))


class ShapeMismatchError(DNGError):
    pass


class NonFiniteWeightsError(DNGError):
    pass


class MissingParameterError(DNGError):
    pass


class EmptyModelError(DNGError):
    pass


class StreamValidationError(DNGError):
    pass


class UnsupportedOptionError(UnsupportedLayerError):
    """A supported layer or function called with an option the converter cannot reproduce exactly."""

    def __init__(self, layer: str, position: str, option: str, value, supported: str):
        self.option, self.value = option, value
        DNGError.__init__(
            self, f"unsupported option {option}={value!r} of {layer} at position '{position}': supported {option}: {supported}"
        )
        self.layer, self.position = layer, position


class InvalidParameterError(DNGError):
    """A state_dict entry that is not a tensor of real numbers (None, a string, a meta tensor, ...)."""
