// The residual stream as shared state: train (or load) a 2-layer attention-only model on repeated
// random tokens, then read it layer by layer: head scores, logit lens, direct attribution, patching.
// Usage: dotnet fsi scripts/residual_stream.fsx [--full] [--steps N] [--checkpoint path]
//   with --checkpoint and an existing file, the model is loaded and only analysed.
#load "Prelude.fsx"

open Prelude
open System
open System.IO
open MechInterp.Model
open MechInterp.Analysis.Residual
open MechInterp.Analysis.Residual.InductionStudy

let settings =
    let s = if args |> Array.contains "--full" then fullSettings else quickSettings
    match intOf "--steps" with
    | Some n -> { s with Steps = n; SnapshotEvery = max 1 (n / 10) }
    | None -> s
let checkpoint = valueOf "--checkpoint" |> Option.defaultValue "artifacts/checkpoints/induction.safetensors"

let printHeads (t: HeadScores.HeadScoreTable) =
    printfn "%s scores (rows: layers, columns: heads)" t.Name
    for l in 0 .. Array2D.length1 t.Values - 1 do
        printfn "  L%d  %s" l (String.Join("  ", [ for h in 0 .. Array2D.length2 t.Values - 1 -> $"{t.Values.[l, h]:F2}" ]))

let printEnd (e: EndAnalysis) =
    printHeads e.PreviousToken
    printHeads e.Induction
    printHeads e.LookBack
    printHeads e.ShiftedInduction
    printfn "logit lens, repeat loss: %s" (String.Join(", ", e.LogitLens |> Array.map (fun (l, v) -> $"{l} {v:F3}")))
    printfn "direct attribution (logit(correct) - mean logit, repeat):"
    for l, v in e.AttributionByHead do printfn "  %-10s %7.3f" l v
    printfn "decomposition error: %.2e" e.DecompositionError
    for p in e.Patching do
        printfn "patching %s: clean %.3f, corrupted %.3f; recovered share (rows %s):" p.Component p.Clean p.Corrupted (String.Join(",", p.RowLabels))
        for r in 0 .. Array2D.length1 p.Recovered - 1 do
            printfn "  %s" (String.Join(" ", [ for c in 0 .. Array2D.length2 p.Recovered - 1 -> $"{p.Recovered.[r, c]:F2}" ]))
    printfn "attribution patching (AtP) %.2f s, exact patching %.1f s" e.AttributionSeconds e.ExactPatchingSeconds
    for c in e.AttributionVsExact do
        let misses = String.Join("; ", [ for place, x, y in c.WorstMisses -> $"{place}: exact {x:F3}, AtP {y:F3}" ])
        printfn "  AtP vs exact, %s: correlation %.3f; worst misses %s" c.Component c.Correlation misses

if File.Exists checkpoint && args |> Array.contains "--checkpoint" then
    // Analyse a saved model: its config must match the task settings (d_vocab, n_ctx).
    use model = HookedTransformer.Load checkpoint
    printfn "loaded %s (%s)" checkpoint (model.Config.ToJson())
    let s = { settings with DModel = model.Config.d_model; Heads = model.Config.n_heads; Layers = model.Config.n_layers
                            PositionalEmbedding = model.Config.positional_embedding_type; MaxRepeat = (model.Config.n_ctx - 1) / 2 }
    printEnd (InductionRun.onOneThread (fun () -> analyseEnd s model 16 0))
else
    let r = run settings 0 16 (Some checkpoint) (printfn "%s")
    printfn "trained %d steps (cap %d) in %.1f s; saved %s" r.Run.StepsRun settings.Steps r.Run.Seconds checkpoint
    for s in r.Run.Snapshots do
        let _, _, prev = HeadScores.best s.PreviousToken
        let _, _, ind = HeadScores.best s.Induction
        let _, _, shifted = HeadScores.best s.ShiftedInduction
        printfn "step %5d  loss %.3f  repeat %.3f  best prev-token %.2f  best induction %.2f  best shifted induction %.2f" s.Step s.Loss s.RepeatLoss prev ind shifted
    printfn "steepest repeat fall ends at step %d; previous-token head at %A, induction head at %A (level %.1f)"
        r.SteepestDropStep r.PreviousTokenStep r.InductionStep headFormedLevel
    printEnd r.End
    let answer = MechInterp.Analysis.Residual.Section.answer r
    printfn "\n%s\n  %s" answer.Question answer.Verdict
    let json = MechInterp.Analysis.Report.Report.writeResults (Path.Combine("artifacts", "results")) "residual" answer (toJson r)
    printfn "numbers in %s" json
