"""The case graph: intake → plan → act → reflect → (act again | report)."""

from __future__ import annotations

from langgraph.graph import END, START, StateGraph

from medagent.agent import nodes
from medagent.agent.state import CaseState


def _after_reflect(state: CaseState) -> str:
    return "act" if state.get("pending") else "report"


def build_graph(checkpointer=None):
    graph = StateGraph(CaseState)
    graph.add_node("intake", nodes.intake)
    graph.add_node("plan", nodes.plan)
    graph.add_node("act", nodes.act)
    graph.add_node("reflect", nodes.reflect)
    graph.add_node("report", nodes.report)
    graph.add_edge(START, "intake")
    graph.add_edge("intake", "plan")
    graph.add_edge("plan", "act")
    graph.add_edge("act", "reflect")
    graph.add_conditional_edges("reflect", _after_reflect, {"act": "act", "report": "report"})
    graph.add_edge("report", END)
    return graph.compile(checkpointer=checkpointer)
