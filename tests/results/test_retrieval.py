"""Retrieval-equivalent ToolSearcher scoring: BM25 over the study data's tool catalogue."""

from __future__ import annotations

import pytest

from trajhpc.data.splits import load_study_data
from trajhpc.results.retrieval import (
    ToolRetriever,
    catalogue_sanity,
    exact_retrieval,
    name_words,
    searched_tools,
    tool_catalogue,
)
from trajhpc.spec import DataSpec

CATALOGUE = {
    "FindDoctor": "find doctor API for finding doctors by specialty and location.",
    "BookAppointment": "book appointment API for booking an appointment with a doctor at a time.",
    "MedicalTreatmentInfo": "medical treatment info API that returns information about a medical treatment.",
    "TreatmentRecommendation": "treatment recommendation API that recommends a treatment for symptoms.",
}
GOLD = "API-Request: [ToolSearcher(keywords='find a doctor by specialty')]"


@pytest.fixture(scope="module")
def retriever() -> ToolRetriever:
    return ToolRetriever.build(CATALOGUE)


@pytest.fixture(scope="module")
def study():
    data = load_study_data(DataSpec())
    everything = [r for block in data.blocks for r in [*data.train[block], *data.heldout[block]]]
    return data, everything


def test_name_words_split_camel_case_and_acronyms():
    assert name_words("FindDoctorBySpecialtyAndLocation") == "find doctor by specialty and location"
    assert name_words("AIConferenceSearch") == "ai conference search"
    assert name_words("GetToday") == "get today"


def test_best_tool_and_nothing_for_unknown_words(retriever):
    assert retriever.best("doctor specialty") == "FindDoctor"
    assert retriever.best("book an appointment") == "BookAppointment"
    assert retriever.best("zebra quantum") is None
    assert retriever.best("") is None


def test_a_paraphrase_that_retrieves_the_gold_tool_counts(retriever):
    paraphrase = "API-Request: [ToolSearcher(keywords='doctors by specialty and location')]"
    assert exact_retrieval(paraphrase, GOLD, False, retriever)
    other_tool = "API-Request: [ToolSearcher(keywords='book appointment')]"
    assert not exact_retrieval(other_tool, GOLD, False, retriever)
    assert not exact_retrieval("API-Request: [FindDoctor(specialty='x')]", GOLD, False, retriever)
    assert not exact_retrieval("no call at all", GOLD, False, retriever)
    assert exact_retrieval(GOLD, GOLD, True, retriever)  # exact stays correct


def test_other_targets_are_scored_as_exact(retriever):
    gold = "API-Request: [FindDoctor(specialty='cardiology')]"
    assert exact_retrieval(gold, gold, True, retriever)
    assert not exact_retrieval("API-Request: [FindDoctor(specialty='cardio')]", gold, False, retriever)


def test_gold_keywords_that_retrieve_nothing_need_an_exact_call(retriever):
    gold = "API-Request: [ToolSearcher(keywords='zebra quantum')]"
    assert not exact_retrieval("API-Request: [ToolSearcher(keywords='quantum zebra')]", gold, False, retriever)


def test_the_catalogue_holds_the_searched_lv3_tools_and_the_documented_ones(study):
    _, everything = study
    catalogue = tool_catalogue(everything)
    assert list(catalogue) == sorted(catalogue)
    assert "FindDoctorBySpecialtyAndLocation" in catalogue  # only an lv3 ToolSearcher response describes it
    assert "AddReminder" in catalogue  # the bundled level-1 documentation
    assert catalogue["FindDoctorBySpecialtyAndLocation"].startswith("find doctor by specialty and location API")


def test_the_gold_response_of_a_searcher_call_is_found_in_the_next_record(study):
    _, everything = study
    named = searched_tools(everything)
    first = next(r for r in everything if r.uid in named and "find doctor by specialty" in r.target)
    assert named[first.uid] == "FindDoctorBySpecialtyAndLocation"
    assert all("ToolSearcher" in r.target for r in everything if r.uid in named)


def test_catalogue_sanity_on_the_default_split(study):
    """How often gold keywords retrieve the tool the gold response named: the figure the
    report prints beside exact_retrieval (0.65 of the held-out ToolSearcher targets)."""
    data, everything = study
    heldout = [r for block in data.blocks for r in data.heldout[block]]
    sanity = catalogue_sanity(heldout, everything, ToolRetriever.build(tool_catalogue(everything)))
    assert (sanity.hits, sanity.n) == (60, 92)
    assert sanity.rate == pytest.approx(60 / 92)


def test_the_catalogue_does_not_depend_on_record_order(study):
    _, everything = study
    assert tool_catalogue(everything) == tool_catalogue(list(reversed(everything)))
