// Sparse autoencoders against ground truth: trains SAELens's four architectures (standard, TopK, BatchTopK,
// JumpReLU) at one width and budget per benchmark on (a) a toy model of superposition's hidden vectors, (b) Sharkey
// et al.'s synthetic dictionary and (c, d) the toy-language MoE decoder's residual stream, prints every SAE's
// metrics (L0, explained variance, MMCS, CE loss recovered, ...), saves the toy and toy-language SAEs in SAELens's
// layout under artifacts/checkpoints/ and the numbers in artifacts/results/sae.json.
// The toy-language part reads artifacts/checkpoints/moe.safetensors (the main job's MoE) or trains that model first.
// Usage: dotnet fsi scripts/sae.fsx [--full] [--architectures topk,jumprelu]
#load "Prelude.fsx"

open Prelude
open System
open System.IO
open MechInterp.Analysis.Dictionary

let baseSettings = SaeSection.settings (if args |> Array.contains "--full" then MechInterp.Analysis.Report.Full else MechInterp.Analysis.Report.Quick)
let settings =
    { baseSettings with
        Architectures =
            listOf "--architectures" |> Option.map (List.map Architecture.parse)
            |> Option.defaultValue baseSettings.Architectures }

let result = SaeStudy.run (printfn "%s") settings
let answer = SaeSection.answer result
printfn "\n%s\n  %s\n  %s" answer.Question answer.Verdict answer.Evidence
let json = MechInterp.Analysis.Report.Report.writeResults (Path.Combine("artifacts", "results")) "sae" answer (SaeSection.toJson result)
printfn "numbers in %s" json

// A saved SAE loads back and splices into its model like any hook.
let sae = SaeFile.load (Path.Combine("artifacts", "checkpoints", "sae_toy_language"))
printfn "loaded %s SAE on %s: d_in %d, d_sae %d" (Architecture.name sae.Config.Architecture) sae.Config.HookName sae.Config.DIn sae.Config.DSae
