"""The README.md written into every export folder (no identifying content)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mammotriage.dicom.vocab import FINDING_KINDS as KINDS

__all__ = ["render_readme"]


def _rule_text(consensus: Mapping[str, Any]) -> str:
    rule = consensus.get("rule")
    iou = consensus.get("match_iou")
    if rule == "union":
        return (f"**union**: every positive label of every reader; labels whose bounding boxes "
                f"overlap with IoU >= {iou} are merged into one finding (the mean of their boxes)")
    if rule == "majority":
        return (f"**majority**: a finding is kept when more than half of the readers of the "
                f"image have a positive label in it (labels match when IoU >= {iou})")
    if rule == "arbitrated":
        return (f"**arbitrated** (double reading, discordance rule {consensus.get('discordance')}): an "
                f"arbitrated exam takes the arbitrator's labels; a concordant exam the union of its two "
                f"readers' labels (IoU >= {iou}); other exams fall back to the union; see "
                f"`consensus_source` per image in `labels.json`")
    return (f"**adjudicator** ({consensus.get('adjudicator')}): that reader's labels are final "
            f"on every exam they read; other exams fall back to the majority rule "
            f"(IoU >= {iou}); see `consensus_source` per image in `labels.json`")


def render_readme(info: Mapping[str, Any]) -> str:
    """README text. ``info``: the export manifest (without ``files``) plus ``key``
    (the datalist key) and ``readers`` (pseudonyms)."""
    snap = info["snapshot"]
    counts = info["counts"]
    deid = info["deidentification"]
    key = info["key"]
    classes = "\n".join(f"| {i} | {i + 1} | {kind} |" for i, kind in enumerate(KINDS))
    excluded = info.get("excluded") or []
    excluded_text = ("\n".join(f"- snapshot image #{e['snapshot_image']} ({e['laterality']}{e['view']}): "
                               f"{e['reason']}" for e in excluded) if excluded else "None.")
    readers = ", ".join(info.get("readers") or []) or "none"
    return f"""# Mammography detection dataset (Mammo Triage export)

Research data, **not for clinical use**. Exported by {info['tool']} on {info['created_at']}
from dataset snapshot `{snap['sha256']}` ({snap['role']} snapshot{': ' + snap['name'] if snap['name'] else ''}).

| | |
|---|---|
| images | {counts['images']} ({counts['reviewed_images']} reviewed by at least one reader) |
| final findings | {counts['final_labels']} |
| reports (SR) | {counts['srs']} |
| readers | {readers} (pseudonyms) |
| excluded images | {counts['excluded']} |

## Files

| path | what |
|---|---|
| `manifest.json` | this export: snapshot, de-identification, counts, exclusions, and the **sha256 and size of every other file** |
| `README.md` | this file |
| `images/NNNN/KK_<view>.dcm` | de-identified DICOM images, one folder per study (`RCC`, `LCC`, `RMLO`, `LMLO` ...) |
| `sr/NNNN/KK_<view>.sr.dcm` | one DICOM Comprehensive SR per reviewed image: a TID 1500 Measurement Report with the image's final findings (TID 1410 groups: finding type, breast site and laterality, the outline as SCOORD), or "No abnormality" |
| `datalist.json` | final labels as a MONAI detection datalist (key `{key}`) |
| `coco.json` | final labels as COCO object detection JSON |
| `labels.json` | everything behind the final labels: the original AI marks (with model version), each reader's labels with their status, the consensus, exam-level BI-RADS and density per reader, and inter-reader agreement |

Check the files with `sha256sum` against `manifest.json` (a folder without `manifest.json`,
or named `*.partial-*`, is an interrupted export: discard it).

## Final labels

The final labels are the snapshot's consensus under its declared rule:
{_rule_text(snap['consensus'])}.

Positive labels are AI marks a reader accepted (possibly moved or re-classified) and
findings a reader added; AI marks nobody reviewed are *not* labels. Images of exams that
no reader reviewed (if any) are listed under `unreviewed` in the datalist with their AI
marks only (`ai_box`, `ai_label`, `ai_score`); they are not in `coco.json` and have no SR.
An image with an empty `box` list was reviewed and has no final finding.

Classes:

| MONAI `label` | COCO `category_id` | kind |
|---|---|---|
{classes}

## Coordinates

All geometry is in **stored pixel coordinates** of the exported DICOM image (before any
display flip or rotation), x = **column**, y = **row**, origin at the top-left corner of
the top-left pixel; values are continuous pixel-edge coordinates, so the box
`[x0, y0, x1, y1]` covers columns `x0 .. x1 - 1` and rows `y0 .. y1 - 1` for integer
values (the same convention as DICOM SCOORD in the SRs, PS3.3 C.18.6).

- **MONAI** (`datalist.json`): `box` is `[x0, y0, x1, y1]`, box mode **`xyxy`**
  (MONAI `StandardMode`: `[xmin, ymin, xmax, ymax]`) with the **first spatial axis = column
  (x)** and the second = row (y). This is the array layout MONAI's DICOM readers return
  (`LoadImage` with `PydicomReader`, default `swap_ij=True`, or `ITKReader`): shape
  `(Columns, Rows)`, or `(1, Columns, Rows)` after `EnsureChannelFirst`. If you read
  pixels with pydicom's `ds.pixel_array`, which is `(Rows, Columns)` (first axis = row),
  use `[y0, x0, y1, x1]` or transpose the array.
  `label` indexes the table above. Load with
  `monai.data.load_decathlon_datalist("datalist.json", is_segmentation=False,
  data_list_key="{key}")`.
- **COCO** (`coco.json`): `bbox` is `[x, y, width, height]` with x = column,
  y = row; `width`/`height` of an image are its Columns/Rows; `segmentation` is the
  finding's outline as one polygon (the box corners for a box, 24 points for an ellipse).
  `file_name` is relative to the export folder. Load with
  `pycocotools.coco.COCO("coco.json")`.

Extra keys per item (`patient`, `study`, `sop`, `laterality`, `view`): pseudonymous Patient
ID, Study and SOP Instance UID (as in the DICOM files) and the view, for patient-level
splits: **split by `patient`**, never by image.

## De-identification

{deid['profile']} (DICOM PS3.15 Table E.1-1), done with {deid['library']}; each image carries
Patient Identity Removed = YES and De-identification Method Code Sequence =
({deid['method_code']['value']}, {deid['method_code']['scheme']}, "{deid['method_code']['meaning']}").

- attributes: {deid['table']};
- UIDs: {deid['uids']} (the SRs reference the de-identified images);
- names and IDs: {deid['names_and_ids']};
- dates and times: {deid['dates_and_times']};
- private attributes: {deid['private_attributes']}; overlays and curves: {deid['overlays_and_curves']};
- pixel data: {deid['pixel_data']}.

Every image was checked against the table (each attribute removed, emptied or replaced
as its action allows) and the export was scanned for the source values of every table
attribute, and for the source images' names, IDs, dates, institution and UIDs, before it
was published.

## Excluded images

{excluded_text}

## Inter-reader agreement

`labels.json` → `agreement`: per reader pair, the per-lesion match rate
(2 x matched / (lesions of A + lesions of B), one-to-one matches with IoU >= {snap['consensus'].get('match_iou')})
and Cohen's kappa on BI-RADS and on density, each with its n, computed over the whole
snapshot.
"""
