/// The main job's experiment runner: runs every registered experiment at the chosen scale, writes each
/// one's numbers to <out>/results/<name>.json and all their sections to <out>/report/index.html.
/// Usage: MechInterp.Experiments [--quick | --full] [--out artifacts] [--only name,name]
module MechInterp.Experiments.Program

open System
open System.Diagnostics
open System.IO
open TorchSharp
open MechInterp
open MechInterp.Analysis.Report

/// Every experiment the main job runs, in report order. To add one, append its `Experiment` value.
let experiments : Experiment list =
    [ MechInterp.Analysis.Superposition.Section.experiment
      MechInterp.Analysis.Residual.Section.experiment
      MechInterp.Analysis.Residual.HypothesisSection.experiment
      MechInterp.Analysis.Discretization.Section.experiment
      MechInterp.Analysis.Experts.MoeExperiment.experiment
      MechInterp.Analysis.Dictionary.SaeSection.experiment ]

let private parseArgs (argv: string[]) =
    let scale = if argv |> Array.contains "--full" then Full else Quick
    let valueOf flag =
        match argv |> Array.tryFindIndex ((=) flag) with
        | Some i when i + 1 < argv.Length -> Some argv.[i + 1]
        | _ -> None
    let out = valueOf "--out" |> Option.defaultValue "artifacts"
    let only = valueOf "--only" |> Option.map (fun s -> s.Split(',', StringSplitOptions.RemoveEmptyEntries) |> Set.ofArray)
    scale, Path.GetFullPath out, only

/// A forward pass through a tiny two-layer network with the kernel setting: proves libtorch,
/// the native library and the managed twin all work in the main job's process.
let private smokeForward () =
    use _scope = torch.NewDisposeScope()
    torch.manual_seed 0L |> ignore
    let x = torch.randn(8L, 16L)                  // [batch, d_in]
    let w1 = torch.randn(16L, 32L).div(torch.tensor 4.0f)      // [d_in, d_hidden]
    let w2 = torch.randn(32L, 10L).div(torch.tensor 4.0f)      // [d_hidden, classes]
    let logits = x.matmul(w1).relu().matmul(w2)   // [batch, classes]
    let probs = Kernels.Kernel.SoftmaxLastDim logits
    let managed = Kernels.Kernel.SoftmaxLastDim(logits, KernelBackend.Managed)
    let diff = (probs - managed).abs().max().item<float32>()
    printfn "smoke forward: logits %A, rows sum to %.6f, native vs managed max diff %g (native kernels: %b)"
        logits.shape (probs.sum(1L).mean().item<float32>()) diff Native.NativeKernels.IsAvailable

[<EntryPoint>]
let main argv =
    let scale, out, only = parseArgs argv
    Runtime.TorchRuntime.EnsureLoaded()
    printfn "MechInterp experiments, %A scale, %d threads, artifacts in %s" scale Settings.Threads out
    smokeForward ()
    let chosen =
        match only with
        | Some names ->
            let unknown = names |> Set.filter (fun n -> experiments |> List.forall (fun e -> e.Name <> n))
            if not unknown.IsEmpty then
                let registered = experiments |> List.map (fun e -> e.Name) |> String.concat ", "
                let unknown = String.Join(", ", unknown)
                failwith $"unknown experiment(s) {unknown}; registered: {registered}"
            experiments |> List.filter (fun e -> names.Contains e.Name)
        | None -> experiments
    let outputs =
        [ for e in chosen do
              printfn "\n== %s: %s" e.Name e.Description
              let clock = Stopwatch.StartNew()
              let output = e.Run scale
              let results = Report.writeResults (Path.Combine(out, "results")) e.Name output.Answer output.Results
              printfn "== %s finished in %.1f s; numbers in %s" e.Name clock.Elapsed.TotalSeconds results
              printfn "   answer: %s" output.Answer.Verdict
              yield e, output ]
    let clock = Stopwatch.StartNew()
    let summary = Report.summarySection [ for e, o in outputs -> e.Name, o.Answer ]
    let sections = summary :: [ for _, o in outputs do yield! o.Sections ]
    let report = Report.write (Path.Combine(out, "report")) "MechInterp report" sections
    printfn "report written to %s in %.1f s" report clock.Elapsed.TotalSeconds
    0
