"""The tabs of the QA page: deviations, batch audit-trail review, audit-trail search and export."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from datetime import datetime, time, timezone
from pathlib import Path

import polars as pl
import streamlit as st

from dashboards import actions, ui
from plant.deviations import CLASSIFICATIONS, STATES, TRANSITIONS

UTC = timezone.utc
DEVIATION_PERMS = ("deviation.open", "deviation.investigate", "deviation.close", "audit.read")


def _flash(text: str) -> None:
    st.session_state["cw_flash_qa"] = text
    st.rerun()


# ------------------------------------------------------------------------------------------ deviations

def deviations_tab() -> None:
    plant = ui.plant()
    state = st.selectbox("State", ["all", *STATES], key="dev_state")
    register = plant.deviations.list(None if state == "all" else state)
    st.dataframe(register, hide_index=True, width="stretch")
    if ui.can("deviation.open"):
        open_form()
    if register.height == 0:
        st.info("No deviations.")
        return
    ids = register["deviation_id"].to_list()[::-1]  # newest first
    dev_id = st.selectbox("Deviation", ids, key="dev_pick")
    dev = plant.deviations.get(dev_id)
    st.subheader(f"{dev.deviation_id} · {dev.state}")
    left, right = st.columns([3, 2])
    with left:
        st.markdown(f"**{dev.title}**  \n{dev.description}")
        st.markdown(f"Owner **{dev.owner or '-'}** · tag {dev.tag or '-'} · classification "
                    f"**{dev.classification or '-'}** · event {dev.event_start_ts:%Y-%m-%d %H:%M} UTC · "
                    f"batches {', '.join(f'`{b}`' for b in dev.batches) or '-'}")
        for name in ("root_cause", "impact", "capa"):
            st.markdown(f"*{name.replace('_', ' ')}*: {getattr(dev, name) or '-'}")
        if dev.signature_id is not None:
            valid = plant.deviations.signature_valid(dev_id)
            st.markdown(f"Closed by **{dev.closed_by}** (signature {dev.signature_id}, "
                        f"{'content matches the signature' if valid else 'CONTENT CHANGED SINCE SIGNING'})")
    with right:
        st.caption("Timeline")
        st.dataframe(plant.deviations.events(dev_id).select("ts", "actor", "action", "to_state", "note"),
                     hide_index=True, width="stretch")
        pdf_export(dev_id)
    workflow_form(dev)


def open_form() -> None:
    plant = ui.plant()
    with st.expander("Open a deviation"), st.form("dev_open"):
        title = st.text_input("Title", key="dev_new_title")
        description = st.text_area("What happened", key="dev_new_desc")
        owners = ["", *plant.site.units, *plant.site.rooms]
        owner = st.selectbox("Unit or room (links the batches running there)", owners, key="dev_new_owner")
        day = st.date_input("Event date (UTC)", key="dev_new_day")
        at = st.time_input("Event time (UTC)", value=time(8, 0), key="dev_new_time")
        if st.form_submit_button("Open deviation"):
            with ui.errors("the deviation was not opened"):
                dev = actions.open_deviation(plant, ui.current(), title, description, owner,
                                             datetime.combine(day, at, tzinfo=UTC))
                _flash(f"{dev.deviation_id} opened; linked batches: {', '.join(dev.batches) or 'none'}")


def workflow_form(dev) -> None:
    """The moves the user may make from the deviation's state; closing is a QA e-signature."""
    nxt = {to: perm for (frm, to), perm in TRANSITIONS.items() if frm == dev.state}
    moves = [to for to, perm in nxt.items() if ui.can(perm)]
    if not nxt:
        st.caption("Closed: no further steps.")
        return
    if others := [f"{to} ({perm})" for to, perm in nxt.items() if to not in moves]:
        st.caption(f"Next steps {', '.join(others)} - not with your role's permissions.")
    if not moves:
        return
    with st.form(f"dev_move_{dev.deviation_id}"):
        to = st.radio("Move to", moves, horizontal=True, key="dev_to")
        klass = st.selectbox("Classification", CLASSIFICATIONS,
                             index=CLASSIFICATIONS.index(dev.classification) if dev.classification else 0,
                             key="dev_class")
        root = st.text_area("Root cause", value=dev.root_cause, key="dev_root")
        impact = st.text_area("Impact assessment", value=dev.impact, key="dev_impact")
        capa = st.text_area("CAPA", value=dev.capa, key="dev_capa")
        if "closed" in moves:
            reason, password = ui.sign_fields("dev_close", "Reason")
        else:
            reason, password = st.text_input("Reason", key="dev_move_reason"), None
        if st.form_submit_button("Sign and close" if moves == ["closed"] else "Apply", type="primary"):
            with ui.errors("the deviation did not move"):
                moved = actions.move_deviation(ui.plant(), ui.current(), dev.deviation_id, to, reason,
                                               password if to == "closed" else None, classification=klass,
                                               root_cause=root, impact=impact, capa=capa)
                _flash(f"{moved.deviation_id} is now {moved.state}")


def pdf_export(dev_id: str) -> None:
    """Render the deviation report on request (it draws trends: a second or two) and offer the file."""
    key = f"cw_pdf_{dev_id}"
    if st.button("Prepare PDF report", key=f"pdf_{dev_id}", icon=":material/picture_as_pdf:"):
        from dashboards.reports import render_deviation_report  # matplotlib and fpdf: a second to import

        plant = ui.plant()
        with tempfile.TemporaryDirectory() as tmp:
            path = render_deviation_report(dev_id, Path(tmp) / f"{dev_id}.pdf", plant.deviations, plant.historian,
                                           plant.journal)
            st.session_state[key] = path.read_bytes()
    if key in st.session_state:
        st.download_button("Download PDF", st.session_state[key], f"{dev_id}.pdf", "application/pdf",
                           key=f"pdf_dl_{dev_id}")


# ------------------------------------------------------------------------------------------ batch review

def review_tab() -> None:
    plant = ui.plant()
    batches = plant.records.batches().sort("start_ts", descending=True)
    if batches.height == 0:
        st.info("No batches recorded.")
        return
    batch_id = st.selectbox("Batch", batches["batch_id"].to_list(), key="rv_batch",
                            format_func=lambda b: f"{b} · {batches.filter(pl.col('batch_id') == b)['unit'][0]}")
    status = plant.review.status(batch_id)
    (st.success if status.reviewed else st.warning)(status.why)
    excerpt = plant.review.excerpt(batch_id)
    st.caption(f"{excerpt.height} audit entries about this batch")
    st.dataframe(excerpt.select("seq", "ts", "actor", "action", "entity", "entity_id", "old", "new", "reason"),
                 hide_index=True, width="stretch")
    if not ui.can("audit.review"):
        st.caption("Signing a review needs the permission audit.review (QA).")
        return
    if excerpt.height == 0:
        return
    with st.form("rv_sign"):
        st.markdown(f"Sign these **{excerpt.height}** entries as **reviewed**.")
        reason, password = ui.sign_fields("rv", "Comment", reason_required=False)
        if st.form_submit_button("Sign review", type="primary"):
            with ui.errors("the review was not signed"):
                sig = actions.sign_review(plant, ui.current(), batch_id, excerpt, password, reason)
                _flash(f"{batch_id}: reviewed - {sig.manifest()}")


# ------------------------------------------------------------------------------------------ audit trail

def audit_tab() -> None:
    plant = ui.plant()
    c = st.columns(4)
    text = c[0].text_input("Search (any field)", key="au_text")
    actor = c[1].text_input("Actor", key="au_actor")
    entity = c[2].selectbox("Entity", ["", "recommendation", "deviation", "alarm", "batch_audit_trail", "batch",
                                       "user", "model", "setpoint", "connector", "audit_trail", "permission"],
                            key="au_entity")
    limit = c[3].number_input("Show newest", min_value=10, max_value=5000, value=200, step=50, key="au_limit")
    filters = {"text": text or None, "actor": actor or None, "entity": entity or None}
    found = plant.audit.entries(**filters)
    st.caption(f"{found.height} matching entries; newest {min(found.height, int(limit))} shown (newest first)")
    st.dataframe(found.tail(int(limit)).reverse().drop("prev_hash"), hide_index=True, width="stretch")
    cols = st.columns(2)
    if cols[0].button("Verify the hash chain", key="au_verify", icon=":material/link:"):
        result = plant.audit.verify()
        (st.success if result.ok else st.error)(
            f"{result.entries} entries, head {result.head_seq}: " + ("chain intact" if result.ok else
                                                                    "; ".join(result.problems[:5])))
    if ui.can("audit.export"):
        if cols[1].button("Prepare CSV export", key="au_export", icon=":material/download:"):
            st.session_state["cw_audit_csv"] = actions.export_audit(plant, ui.current(), found, filters)
        if "cw_audit_csv" in st.session_state:
            st.download_button("Download CSV", st.session_state["cw_audit_csv"], "audit-trail.csv", "text/csv",
                               key="au_dl")
            st.caption("The export is on the audit trail (who, how many rows, the file's SHA-256).")


TABS: dict[str, Callable[[], None]] = {"Deviations": deviations_tab, "Batch review": review_tab,
                                       "Audit trail": audit_tab}


def tabs_for(can: Callable[[str], bool]) -> list[str]:
    """The QA tabs a user's permissions open."""
    out = []
    if any(can(p) for p in DEVIATION_PERMS):
        out.append("Deviations")
    if can("audit.read"):
        out += ["Batch review", "Audit trail"]
    return out
