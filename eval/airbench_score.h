/* airbench_score: AIR-Bench's scores from result files, as the official scripts compute them, with the
 * aggregates the official scripts leave to hand work.
 *
 *   Foundation (score_foundation.py): the response's letter by the official rule (ab_foundation_letter), the
 *   correct letter by exact text match of answer_gt against choice_a..choice_d; accuracy per subset
 *   (task_name + "_" + dataset_name, 25 rows) over the *parsed* responses (acc_official = correct / parsed:
 *   unparseable ones leave the denominator, as the official script does), and beside it correct / items
 *   (acc_strict); then per task (19 rows, the subsets of a task pooled), per category (speech, sound, music)
 *   and overall (pooled), and the leaderboard's average (the unweighted mean of the task accuracies, over the
 *   tasks of the 19 that the file holds).
 *   Chat (cal_score.py): the judge's reply must be two integers separated by one space; in the normal order
 *   Assistant 1 is the reference (answer_gt) and Assistant 2 the model, in the swapped order the reverse;
 *   per bucket (speech = speech_QA + speech_dialogue_QA, sound, music, speech_and_sound, speech_and_music)
 *   the model's mean score in each order, their mean (the published score), the reference's, the win rate
 *   (model strictly above the reference) and the replies that did not parse (excluded, as cal_score.py
 *   does); Mixed = mean of speech_and_sound and speech_and_music, Average = mean of Speech, Sound, Music, Mixed.
 *
 * Result files: JSONL or one JSON array (jsonl.h). A uniq_id that appears more than once (a resumed run
 * that retried a failed item) counts once: its last record wins (the official scripts count every line; our
 * runner's compacted files have one line per id anyway). Records without uniq_id all count.
 * ref: OFA-Sys/AIR-Bench score_foundation.py, cal_score.py; ../shared/AIRBENCH.md §3.4, §4.
 * Thread safety: no shared state.
 */
#pragma once

#include <cjson/cJSON.h>
#include <stdio.h>

#include "es_error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The official Foundation rule: p = response stripped of surrounding whitespace, every '\n' removed; p empty
 * or "None" -> 0; p[0] in "ABCD" -> p[0]; else len(p) > 1 and p[len-2] in "ABCD" -> p[len-2]; else 0.
 * Returns 'A'..'D', or 0 when the response does not parse. NULL -> 0.
 * As Python reads it: response is UTF-8 and p[len-2] is the second-to-last *code point* ("答案是B。" -> 'B',
 * "答案：B" -> 0); the whitespace stripped is Python's str.isspace() set, Unicode spaces (U+00A0, U+3000, ...) and
 * \x1c..\x1f included. Note "(B)" -> 'B' (p[-2] is 'B'), although AIRBENCH.md §3.4 lists it as a failure. */
int ab_foundation_letter(const char *response);

/* The correct letter of a Foundation record: the first of choice_a..choice_d (string fields; absent or null
 * ones are skipped) whose text equals answer_gt exactly; 0 when none does (or answer_gt is missing or not a
 * string). Keys are case-sensitive and, as with Python's json, the last of duplicate keys counts. */
int ab_foundation_gt_letter(const cJSON *record);

/* Scores a Foundation result file. Writes a text report to text (NULL: none) and, when json is not NULL, a
 * JSON report to *json (the caller deletes it; NULL on failure). A record without task_name, dataset_name or a
 * string response (each a string), or with a uniq_id that is not a number, string or null, is an error naming
 * its line (for an array file: its element); a record whose answer_gt matches no choice is excluded from every
 * other count and counted (bad_gt) and reported, not fatal (the official script exits there, when the response
 * parsed). A task_name not among the 19 goes to category "other": reported per subset and task, in "overall",
 * not in the leaderboard average. An empty file is a report of zeros.
 *
 * Counts, per group (JSON keys; the text report's columns): n_items (records scored, bad_gt excluded),
 * n_parsed, n_correct, n_fail (unparsed: n_items - n_parsed), n_error (of n_items, records whose "error" is
 * neither absent, null nor false: generation failures, written with response ""), n_bad_gt, acc_official =
 * n_correct / n_parsed and acc_strict = n_correct / n_items (fractions in JSON, percent with one decimal in
 * text; null / "-" when the denominator is 0). Tasks, categories and overall pool their records.
 * JSON report:
 *   benchmark "AIR-Bench Foundation", file, n_records (records read), n_duplicates (records replaced by a later
 *     one with the same uniq_id), truncated_tail (a partial last line was dropped);
 *   subsets: [{subset "<task_name>_<dataset_name>", task_name, dataset_name, category, counts}], in leaderboard
 *     task order, then by dataset_name; tasks not among the 19 last, by name;
 *   tasks: [{task_name, display_name (null if not among the 19), category, leaderboard_row (1..19 or null),
 *     counts}], the tasks present, same order;
 *   categories: [{category "speech" | "sound" | "music" | "other" (only when present), counts}];
 *   overall: counts;
 *   leaderboard_average: {acc_official (unweighted mean over the tasks among the 19 with n_items > 0 and
 *     n_parsed > 0), acc_strict (mean over those with n_items > 0), n_tasks (tasks with n_items > 0),
 *     n_tasks_official (of those, with n_parsed > 0), n_tasks_leaderboard (19)}. */
int ab_score_foundation(const char *results_path, FILE *text, cJSON **json, es_error_t *err);

/* cal_score.py's parse of a judge reply: strip surrounding whitespace, remove every '\n', split on ' ': exactly
 * two parts, each an integer as Python's int() reads it (optional surrounding whitespace, optional sign,
 * decimal digits, single '_' between digits as in "1_0"). Returns 0 and the two numbers (first / second may be
 * NULL), or ES_EINVAL, leaving them untouched. So "8 7" and " 8 7\n" parse, "8, 7", "8.5 7", "8  7" do not.
 * Differences from Python: only ASCII digits (int() also takes other Unicode decimal digits, e.g. fullwidth);
 * values beyond a long saturate at LONG_MIN / LONG_MAX (Python's are unbounded; such a reply is > 10 anyway).
 * No range check here (cal_score.py has no lower bound either). */
int ab_chat_parse_scores(const char *reply, long *first, long *second);

/* Aggregates judge outputs over both orders: normal_path (Assistant 1 = reference) and swapped_path
 * (Assistant 1 = model); either may be NULL (that order is then null in the report, and the published
 * score is not formed), not both. Each record needs task_name and the judge's reply in "gpt-score"
 * (cal_score.py's input; taken first when both are present) or "gen" (score_chat.py's batch_run_output.jsonl);
 * a reply that is null or not a string counts as unparsed (cal_score.py would crash on it). A record with
 * neither key, or a missing or unknown task_name, is an error naming the file and line. A score above 10 counts
 * as unparsed, as in cal_score.py (whose exit(1) there is caught by its own bare `except:`).
 * Records with the same uniq_id within one file count once (the last); judge files without uniq_id (score_chat.py
 * writes none) count every record. A win is the model strictly above the reference.
 * JSON report:
 *   benchmark "AIR-Bench Chat"; files: {normal, swapped: {path, n_records, n_duplicates, truncated_tail} | null};
 *   tasks: [{task_name, bucket, <row>}] for the 8 Chat tasks; buckets: [{bucket, <row>}] for speech, sound,
 *   music, speech_and_sound, speech_and_music (pooled over their tasks); mixed: <row>; average: <row>.
 *   <row> = normal, swapped: {n (parsed replies), n_fail (unparsed), n_win, model, reference (mean scores),
 *   win_rate (n_win / n)} | null when that file was not given; score = the mean of the two orders' model means
 *   (the published number), reference and win_rate = the means of the two orders' values (null unless both
 *   orders are given and defined). mixed = the mean of speech_and_sound and speech_and_music, average = the mean
 *   of speech, sound, music and mixed, value by value (counts summed); a mean with an undefined part is null.
 * The text report has the same rows: the 8 tasks, the 5 buckets, Mixed, Average. */
int ab_score_chat(const char *normal_path, const char *swapped_path, FILE *text, cJSON **json, es_error_t *err);

#ifdef __cplusplus
}
#endif
