"""verifiers (0.4.0, verifiers.v1) task sets defined in Python, for tests/test_verifiers_adapter.py:
a single-turn task scored on its answer, and a tool task whose toolset multiplies."""

import verifiers.v1 as vf


class QAData(vf.TaskData):
    answer: str = ""


class QATask(vf.Task[QAData]):
    @vf.reward
    async def correct(self, task, trace) -> float:
        reply = trace.last_reply
        return float(reply.endswith(f"<answer>{task.answer}</answer>"))


class Calculator(vf.Toolset):
    @vf.tool
    def multiply(self, a: int, b: int) -> str:
        """Multiplies two integers."""
        return str(int(a) * int(b))

    @vf.tool
    async def explode(self) -> str:
        """Always fails."""
        raise RuntimeError("boom")


class ToolTask(QATask):
    @vf.reward(weight=0.5)
    async def used_tool(self, trace) -> float:
        return float(any("multiply" == (m.name or "") for m in trace.tool_messages))

    @classmethod
    def toolsets(cls, config):
        return [Calculator(vf.ToolsetConfig())]


def qa_tasks():
    return [QATask(QAData(prompt=f"What is {a} + {a}?", answer=str(2 * a), system_prompt="Answer in <answer> tags."))
            for a in range(1, 7)]


tool_tasks = [ToolTask(QAData(prompt=f"What is {a} * 7?", answer=str(7 * a))) for a in range(3, 6)]
