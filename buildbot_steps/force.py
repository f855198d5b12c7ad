"""Guards on Buildbot's force form: what a forced build may ask for.

Buildbot's `ForceScheduler.force` takes the `builderid` of the request as is:
any force scheduler starts a build on any builder, with that scheduler's
parameters (a "Run the tests" button could start a deploy without a release
directory, or a "Deploy" button a tests build). `OwnBuildersForceScheduler`
refuses a builder it does not list. `BoundedIntParameter` is an integer field
with limits, refused with a message naming the field and the allowed range.

    from buildbot_steps.force import BoundedIntParameter, OwnBuildersForceScheduler
    OwnBuildersForceScheduler(name="force-tests", builderNames=["tests"],
        properties=[BoundedIntParameter(name="shards", minimum=0, maximum=16)])
"""

from __future__ import annotations

from buildbot.schedulers.forcesched import (
    CollectedValidationError,
    ForceScheduler,
    IntParameter,
    ValidationError,
)  # fmt: skip
from twisted.internet import defer


class OwnBuildersForceScheduler(ForceScheduler):
    """A ForceScheduler that starts builds only on the builders it lists."""

    @defer.inlineCallbacks
    def force(self, owner, builderNames=None, builderid=None, **kwargs):
        chosen = yield self.computeBuilderNames(builderNames, builderid)
        foreign = sorted(set(chosen) - set(self.builderNames))
        if foreign:
            # The data API turns this error (only this one) into a JSON-RPC
            # "invalid params" answer carrying the message; nothing is started.
            raise CollectedValidationError({
                "builderid": f"force scheduler {self.name!r} does not start builds on "
                f"{', '.join(foreign)}: use that builder's own force button "
                f"(this one starts {', '.join(self.builderNames)})"
            })  # fmt: skip
        return (yield super().force(owner, builderNames=builderNames, builderid=builderid, **kwargs))


class BoundedIntParameter(IntParameter):
    """An integer force-form field accepted only within [minimum, maximum]."""

    def __init__(self, name: str, minimum: int, maximum: int, **kwargs) -> None:
        if minimum > maximum:
            raise ValueError(f"BoundedIntParameter {name!r}: minimum {minimum} is above maximum {maximum}")
        self.minimum, self.maximum = minimum, maximum
        super().__init__(name, **kwargs)

    def parse_from_arg(self, s) -> int:
        try:
            value = int(s)
        except (TypeError, ValueError):
            raise ValidationError(f"{self.label}: {s!r} is not a whole number") from None
        if not self.minimum <= value <= self.maximum:
            raise ValidationError(f"{self.label}: {value} is outside {self.minimum}..{self.maximum}")
        return value
