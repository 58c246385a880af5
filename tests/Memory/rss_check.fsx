// The resident-set check of a long run (issue 17): trains the --full superposition phase diagram (1,323 instances,
// batch 1,024) for a bounded number of steps and holds VmRSS within ±10% of its value after warm-up. Too slow for
// the test command (about 2 minutes on one core), so build.fsx's `rss` target runs it and .ci/run calls that.
//   dotnet fsi tests/Memory/rss_check.fsx [--steps N]
// Without the fixed malloc mmap threshold (Native/Allocator.cs) the same steps went from 1.0 GB to 3.5 GB.
#r "nuget: TorchSharp-cpu, 0.107.0"
#r "../../src/Analysis.FSharp/bin/Release/net10.0/linux-x64/MechInterp.Core.dll"
#r "../../src/Analysis.FSharp/bin/Release/net10.0/linux-x64/MechInterp.Analysis.dll"

open System
open System.IO
open MechInterp.Analysis
open MechInterp.Analysis.Superposition

MechInterp.Runtime.TorchRuntime.EnsureLoaded()
let args = fsi.CommandLineArgs |> Array.skip 1
let steps =
    match args |> Array.tryFindIndex ((=) "--steps") with
    | Some i -> int args.[i + 1]
    | None -> 400
let warmup = steps / 4
let every = 25

let rssMb () =
    File.ReadAllLines "/proc/self/status"
    |> Array.find (fun l -> l.StartsWith "VmRSS:")
    |> fun l -> float (l.Split(' ', StringSplitOptions.RemoveEmptyEntries).[1]) / 1024.0

let samples = ResizeArray<int * float>()
let clock = Diagnostics.Stopwatch.StartNew()
let log (line: string) =
    // The trainer logs "step N/M: ..." every LogEvery steps: sample there.
    let i = line.IndexOf "step "
    if i >= 0 then
        let step = int (line.Substring(i + 5).Split('/').[0])
        let mb = rssMb ()
        samples.Add((step, mb))
        printfn "rss step %5d  %7.1f MB  (%.0f s)" step mb clock.Elapsed.TotalSeconds
let full = Experiment.config Report.Full
let phase = { full.Phase with Training = { full.Phase.Training with Steps = steps; LogEvery = every; ConvergenceWindow = steps * 2 } }
printfn "rss check: phase diagram at full scale, %d instances, %d steps, warm-up %d, VmRSS at start %.1f MB"
    (phase.Importances.Length * phase.Densities.Length * phase.Replicates) steps warmup (rssMb ())
let result = PhaseDiagram.run log phase
let after = samples |> Seq.filter (fun (s, _) -> s >= warmup) |> Seq.map snd |> Array.ofSeq
if after.Length < 3 then
    eprintfn "rss check: only %d samples after warm-up; run more steps" after.Length
    exit 2
let reference = after.[0]
let lo, hi = Array.min after, Array.max after
let flat = lo >= 0.9 * reference && hi <= 1.1 * reference
printfn "rss check: %d steps; after warm-up VmRSS %.1f MB at step %d, then %.1f to %.1f MB (%+.1f%% / %+.1f%%): %s"
    result.StepsRun reference warmup lo hi (100.0 * (lo / reference - 1.0)) (100.0 * (hi / reference - 1.0))
    (if flat then "flat within ±10%" else "NOT flat")
exit (if flat then 0 else 1)
