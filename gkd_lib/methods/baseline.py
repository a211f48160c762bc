"""baseline: cross-entropy on the labels only, no teacher."""

from gkd_lib.methods.base import METHODS, Method


@METHODS.register("baseline")
class Baseline(Method):
    """The student trained alone (or the teacher itself): no distillation term."""

    needs_teacher = False

    def __init__(self, context):
        super().__init__()

    def terms(self, student, teacher, labels):
        return {}
