/// The main job's experiment runner: runs every experiment at the chosen scale and writes the report.
/// Usage: MechInterp.Experiments [--quick | --full] [--out artifacts]
module MechInterp.Experiments.Program

open System
open System.IO
open TorchSharp
open MechInterp

type Scale =
    | Quick
    | Full

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

/// Writes a results file atomically: a temporary file renamed into place.
let private writeJson (path: string) (node: Text.Json.Nodes.JsonNode) =
    match Path.GetDirectoryName path with
    | null -> ()
    | dir -> Directory.CreateDirectory dir |> ignore
    let tmp = path + ".tmp"
    File.WriteAllText(tmp, node.ToJsonString(Text.Json.JsonSerializerOptions(WriteIndented = true)))
    File.Move(tmp, path, true)
    path

/// The residual-stream study and experiment_1, until the report API registers them as experiments.
let private runResidualExperiments (scale: Scale) (out: string) =
    let log (line: string) = Console.Out.WriteLine line; Console.Out.Flush()
    let clock = Diagnostics.Stopwatch.StartNew()
    let study =
        MechInterp.Analysis.Residual.InductionStudy.run
            (if scale = Full then MechInterp.Analysis.Residual.InductionStudy.fullSettings else MechInterp.Analysis.Residual.InductionStudy.quickSettings)
            0 16 (Some(Path.Combine(out, "checkpoints", "residual-induction.safetensors")))
    let path = writeJson (Path.Combine(out, "results", "residual.json")) (MechInterp.Analysis.Residual.InductionStudy.toJson study)
    log (sprintf "residual: induction study in %.1f s -> %s" clock.Elapsed.TotalSeconds path)
    clock.Restart()
    let settings =
        if scale = Full then MechInterp.Analysis.Discretization.Experiment1.fullSettings
        else MechInterp.Analysis.Discretization.Experiment1.quickSettings
    let e1 = MechInterp.Analysis.Discretization.Experiment1.run settings log
    let path = writeJson (Path.Combine(out, "results", "experiment1.json")) (MechInterp.Analysis.Discretization.Experiment1.toJson e1)
    log (sprintf "experiment1: %d variants x %d seeds in %.1f s -> %s" e1.Variants.Length settings.Seeds.Length clock.Elapsed.TotalSeconds path)

[<EntryPoint>]
let main argv =
    let scale, out = parseArgs argv
    Runtime.TorchRuntime.EnsureLoaded()
    printfn "MechInterp experiments, %A scale, %d threads, artifacts in %s" scale Settings.Threads out
    smokeForward ()
    let report = Path.Combine(out, "report", "index.html")
    runResidualExperiments scale out
    printfn "the report will be written to %s once the report API is merged" report
    0
