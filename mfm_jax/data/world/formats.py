"""World questions written in the MMWorld and VLM4D JSON schemas.

MMWorld (one video-level record per clip):
  {"video_id", "video_url", "discipline", "subdiscipline", "captions": [str],
   "questions": [{"type", "question", "options": {"a".."d"}, "answer" (the
   text of the right option), "requires_domain_knowledge": false,
   "requires_audio": false, "requires_visual": true, "question_only": false,
   "correct_answer_label"}]}
VLM4D (one record per question; exactly the fields of real_mc.json):
  {"id", "video", "question_type": "multiple-choice", "question",
   "choices": {"A".."D"}, "answer" (the text of the right choice)}
VLM4D ids are "<video_id>_<ego|exo>_<category>_<n>", so a reader can split
them by perspective and category without extra fields.

`clip_questions(ep, view)` makes every question about one view of an episode
(view 0 by default: the video the records point to), with that view's enter /
exit events; `evidence_records` keeps them with their evidence (world_qa).
"""
from __future__ import annotations

from mfm_jax.data.world import episode as episode_lib
from mfm_jax.data.world import questions as mm_lib
from mfm_jax.data.world import questions_vlm4d as v4_lib

DISCIPLINE = "Embodied Tasks"
SUBDISCIPLINE = "Physics simulation"
MM_LABELS = ("a", "b", "c", "d")
V4_LABELS = ("A", "B", "C", "D")


def video_id(prefix: str, index: int) -> str:
  """E.g. 'world_smoke_train_000003'."""
  return f"{prefix}_{index:06d}"


def clip_questions(ep: episode_lib.Episode, view: int = 0
                   ) -> tuple[list[mm_lib.Question], list[mm_lib.Question]]:
  """(MMWorld-type questions, VLM4D-style questions) of view `view`."""
  mm = mm_lib.mmworld_questions(ep.scene, ep.view_events(view), ep.twins,
                                ep.seed)
  v4 = v4_lib.vlm4d_questions(ep.scene, ep.views[view], ep.tracks[view],
                              ep.ego_motion, ep.seed)
  return mm, v4


def mmworld_record(vid: str, video_url: str, caption: str,
                   questions: list[mm_lib.Question]) -> dict:
  """The MMWorld video-level record of a clip."""
  qs = []
  for q in questions:
    qs.append({
        "type": q.type, "question": q.question,
        "options": dict(zip(MM_LABELS, q.options)),
        "answer": q.answer_text,
        "requires_domain_knowledge": False, "requires_audio": False,
        "requires_visual": True, "question_only": False,
        "correct_answer_label": MM_LABELS[q.answer],
    })
  return {"video_id": vid, "video_url": video_url, "discipline": DISCIPLINE,
          "subdiscipline": SUBDISCIPLINE, "captions": [caption],
          "questions": qs}


def vlm4d_records(vid: str, video_url: str, ego: bool,
                  questions: list[mm_lib.Question]) -> list[dict]:
  """The VLM4D question records of a clip."""
  view = "ego" if ego else "exo"
  return [{
      "id": f"{vid}_{view}_{q.type}_{n}", "video": video_url,
      "question_type": "multiple-choice", "question": q.question,
      "choices": dict(zip(V4_LABELS, q.options)), "answer": q.answer_text,
  } for n, q in enumerate(questions)]


def evidence_records(questions: list[mm_lib.Question]) -> list[dict]:
  """Questions with their answers' simulation evidence (JSON-able)."""
  return [{"type": q.type, "question": q.question, "options": list(q.options),
           "answer": q.answer, "evidence": q.evidence} for q in questions]
