/// The main job's experiment runner: runs every experiment at the chosen scale and writes the report.
/// Usage: MechInterp.Experiments [--quick | --full] [--out artifacts]
module MechInterp.Experiments.Program

open System
open System.IO
open TorchSharp
open MechInterp
open MechInterp.Analysis.Report

/// Every experiment of the main job, in report order.
let experiments: Experiment list = [ Analysis.Experts.MoeExperiment.experiment ]

let private parseArgs (argv: string[]) =
    let scale = if argv |> Array.contains "--full" then Full else Quick
    let out =
        match argv |> Array.tryFindIndex ((=) "--out") with
        | Some i when i + 1 < argv.Length -> argv.[i + 1]
        | _ -> "artifacts"
    scale, Path.GetFullPath out

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
    let scale, out = parseArgs argv
    Runtime.TorchRuntime.EnsureLoaded()
    printfn "MechInterp experiments, %A scale, %d threads, artifacts in %s" scale Settings.Threads out
    smokeForward ()
    let sections =
        [ for experiment in experiments do
              let clock = Diagnostics.Stopwatch.StartNew()
              printfn "\n%s: %s" experiment.Name experiment.Description
              let output = experiment.Run scale
              let path = Report.writeResults (Path.Combine(out, "results")) experiment.Name output.Results
              printfn "%s: %.1f s, results in %s" experiment.Name clock.Elapsed.TotalSeconds path
              yield! output.Sections ]
    let page = Report.write (Path.Combine(out, "report")) "MechInterp report" sections
    printfn "report: %s" page
    0
