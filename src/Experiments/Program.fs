/// The main job's experiment runner: runs every registered experiment at the chosen scale, writes each
/// one's numbers to <out>/results/<name>.json and all their sections to <out>/report/index.html.
/// Usage: MechInterp.Experiments [--quick | --full] [--out artifacts] [--only name,name] [--suite main|smoke]
///          [--jobs n]                          n processes of this program at once, then merged (see runJobs)
///          [--shard i/n | --shard-count n]     run one share of the units, writing <out>/partials/shard-i-of-n.json
///        MechInterp.Experiments merge [--out artifacts] [--partials dir] [--suite main|smoke]
///        MechInterp.Experiments list [--quick | --full] [--shard-count n] [--only ...]   the units, and each one's shard
/// Without --shard, the share comes from a Slurm job array or a Kubernetes Indexed Job when one sets it.
module MechInterp.Experiments.Program

open System
open System.IO
open TorchSharp
open MechInterp
open MechInterp.Analysis.Report

/// Seconds a unit took at quick scale on one thread of this project's 2-core machine, two units running at once
/// (`--jobs 2`): what shards balance their shares by. At full scale the same proportions are assumed; a unit not
/// listed counts 60. Only the balance depends on these numbers, never a result.
let private unitCost (experiment: string) (id: string) =
    match experiment, id with
    | "superposition", "relu-20-5" -> 83.0
    | "superposition", "linear-20-5" -> 31.0
    | "superposition", "relu-5-2" -> 15.0
    | "superposition", "relu-80-20" -> 55.0
    | "superposition", "phase-diagram" -> 10.0
    | "residual", _ -> 32.0
    | "residual_hypothesis", "toy_language-depth2-residual" -> 38.0
    | "residual_hypothesis", "toy_language-depth2-plain" -> 49.0
    | "residual_hypothesis", "toy_language-depth4-residual" -> 89.0
    | "residual_hypothesis", "toy_language-depth4-plain" -> 92.0
    | "residual_hypothesis", _ -> 90.0
    | "experiment1", _ -> 720.0
    | "moe", _ -> 330.0
    | "sae", _ -> 230.0
    | _ -> 60.0

/// Every experiment the main job runs, in report order. To add one, append its `Experiment` value
/// (`Experiment.single name description run` for an experiment that is one unit).
let experiments : Experiment list =
    [ MechInterp.Analysis.Superposition.Section.experiment
      MechInterp.Analysis.Residual.Section.experiment
      MechInterp.Analysis.Residual.HypothesisSection.experiment
      MechInterp.Analysis.Discretization.Section.experiment
      MechInterp.Analysis.Experts.MoeExperiment.experiment
      MechInterp.Analysis.Dictionary.SaeSection.experiment ]
    |> List.map (fun e -> e |> Experiment.withCosts (fun _ id -> unitCost e.Name id))

/// The shard check's suite: the two split experiments at a size that trains in seconds (the same shapes, a few
/// steps), so three shards, a merge and a single run compare in well under a minute.
let smokeExperiments : Experiment list =
    let superposition =
        let c = MechInterp.Analysis.Superposition.Experiment.config Quick
        let t = { c.Phase.Training with Steps = 60; BatchSize = 128; ConvergenceWindow = 20; LogEvery = 30 }
        let shrink (s: MechInterp.Analysis.Superposition.Sweep.SweepSetting) =
            { s with Densities = [ 1.0; 0.1 ]; Replicates = 2; Training = t }
        { c with
            Main = c.Main |> List.map shrink; Plane = shrink c.Plane; Dimensionality = shrink c.Dimensionality
            Phase = { c.Phase with Importances = [| 0.5; 2.0 |]; Densities = [| 0.1; 1.0 |]; Replicates = 2; Training = t } }
    let hypothesis =
        let q = MechInterp.Analysis.Residual.HypothesisSection.quickSettings
        { q with DModel = 16; Heads = 2; Depths = [ 2; 3 ]; Seeds = [ 0; 1 ]
                 Language = { q.Language with Steps = 40; EvalEvery = 20; ConvergenceWindow = 20 }
                 LensBatch = 8; AnalysisBatch = 8; LensFit = { q.LensFit with Steps = 20 } }
    [ MechInterp.Analysis.Superposition.Section.experimentWith (fun _ -> superposition)
      MechInterp.Analysis.Residual.HypothesisSection.experimentWith (fun _ -> hypothesis) None ]

type private Options =
    { Merge: bool
      List: bool
      Scale: Scale
      Out: string
      Partials: string option
      Only: Set<string> option
      Suite: string
      Shard: string option
      ShardCount: int option
      Jobs: int }

let private parseArgs (argv: string[]) =
    let valueOf flag =
        match argv |> Array.tryFindIndex ((=) flag) with
        | Some i when i + 1 < argv.Length -> Some argv.[i + 1]
        | Some _ -> failwith $"{flag} needs a value"
        | None -> None
    { Merge = argv |> Array.contains "merge"
      List = argv |> Array.contains "list"
      Scale = if argv |> Array.contains "--full" then Full else Quick
      Out = valueOf "--out" |> Option.defaultValue "artifacts" |> Path.GetFullPath
      Partials = valueOf "--partials" |> Option.map Path.GetFullPath
      Only = valueOf "--only" |> Option.map (fun s -> s.Split(',', StringSplitOptions.RemoveEmptyEntries) |> Set.ofArray)
      Suite = valueOf "--suite" |> Option.defaultValue "main"
      Shard = valueOf "--shard"
      Jobs =
        match valueOf "--jobs" with
        | None -> 1
        | Some v ->
            match Int32.TryParse v with
            | true, n when n >= 1 -> n
            | _ -> failwith $"--jobs {v}: expected a whole number of at least 1"
      ShardCount =
        valueOf "--shard-count" |> Option.map (fun v ->
            match Int32.TryParse v with
            | true, n when n >= 1 -> n
            | _ -> failwith $"--shard-count {v}: expected a whole number of at least 1") }

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

let private log (line: string) = Console.Out.WriteLine line; Console.Out.Flush()

let private choose (registry: Experiment list) (only: Set<string> option) =
    match only with
    | Some names ->
        let unknown = names |> Set.filter (fun n -> registry |> List.forall (fun e -> e.Name <> n))
        if not unknown.IsEmpty then
            let registered = registry |> List.map (fun e -> e.Name) |> String.concat ", "
            let unknown = String.Join(", ", unknown)
            failwith $"unknown experiment(s) {unknown}; registered: {registered}"
        registry |> List.filter (fun e -> names.Contains e.Name)
    | None -> registry

let private merge (o: Options) (registry: Experiment list) =
    let dir = o.Partials |> Option.defaultValue (Path.Combine(o.Out, "partials"))
    match Shards.read dir o.Suite registry with
    | Error problems ->
        eprintfn "merge: nothing written; the partials in %s are incomplete or inconsistent:" dir
        for p in problems do eprintfn "  - %s" p
        1
    | Ok merged ->
        let units = merged.Partials |> Seq.sumBy (fun kv -> kv.Value.Count)
        log $"merge: {units} units of {merged.Experiments.Length} experiments from {dir} ({Shards.scaleName merged.Scale} scale)"
        let outputs = Runner.combine merged.Scale merged.Experiments merged.Partials
        let report = Runner.write log o.Out outputs
        log $"report written to {report}"
        0

/// Prints every unit in order with the shard that runs it for the given count: nothing trains.
let private list (o: Options) (registry: Experiment list) =
    let all = [ for e in choose registry o.Only do for u in e.Units o.Scale -> e, u ]
    let count = defaultArg o.ShardCount 1
    log $"{all.Length} units at {Shards.scaleName o.Scale} scale; shard of {count}:"
    for owner, (e, u) in List.zip (Shards.owners count Shards.unitCost all) all do
        let seeds = if u.Seeds.IsEmpty then "" else ", seeds " + String.Join(",", u.Seeds)
        log $"  {owner,3}  {e.Name}/{u.Id}  (setting {u.Setting}{seeds}, cost {u.Cost:F0})"
    0

/// `--jobs n`: the units in n processes of this program at once, shares balanced by cost (`Shards.assign`), each
/// process on cores / n threads (one on two cores) unless MECHINTERP_THREADS says otherwise, then their partials
/// merged into the results and the report. Many units are too small for intra-op threads, so on two cores two
/// one-thread processes finish sooner than one process on two threads.
let private runJobs (o: Options) (argv: string[]) (registry: Experiment list) =
    let dir = Path.Combine(o.Out, "partials", "jobs")
    if Directory.Exists dir then Directory.Delete(dir, true)   // an earlier run's shards would not match this one's
    let passed =
        let rec drop = function
            | "--jobs" :: _ :: rest -> drop rest
            | a :: rest -> a :: drop rest
            | [] -> []
        drop (List.ofArray argv)
    let threads = max 1 (Environment.ProcessorCount / o.Jobs)
    let start (i: int) =
        let info = Diagnostics.ProcessStartInfo(nonNull Environment.ProcessPath, RedirectStandardOutput = true, RedirectStandardError = true)
        // Run as `dotnet MechInterp.Experiments.dll`, the child needs the assembly first; as the app host, it does not.
        if Path.GetFileNameWithoutExtension(Environment.ProcessPath) = "dotnet" then
            info.ArgumentList.Add(Reflection.Assembly.GetEntryAssembly() |> nonNull |> _.Location)
        for a in passed @ [ "--shard"; $"{i}/{o.Jobs}"; "--partials"; dir ] do info.ArgumentList.Add a
        if String.IsNullOrEmpty(Environment.GetEnvironmentVariable "MECHINTERP_THREADS") then
            info.Environment.["MECHINTERP_THREADS"] <- string threads
        let p = new Diagnostics.Process(StartInfo = info)
        let forward (e: Diagnostics.DataReceivedEventArgs) =
            match e.Data with
            | null -> ()
            | line when line.StartsWith "shard " -> log line
            | line -> log $"job {i}: {line}"
        p.OutputDataReceived.Add forward
        p.ErrorDataReceived.Add forward
        p.Start() |> ignore
        p.BeginOutputReadLine()
        p.BeginErrorReadLine()
        p
    log $"{o.Jobs} jobs at once, {threads} thread(s) each; their partials in {dir}"
    let children = [ for i in 0 .. o.Jobs - 1 -> start i ]
    // Stopping this process (Ctrl-C, a scheduler's SIGTERM) stops the jobs too, rather than leaving them running.
    let stop () = for p in children do (try (if not p.HasExited then p.Kill true) with _ -> ())
    use _cancel = Console.CancelKeyPress.Subscribe(fun _ -> stop ())
    use _term = System.Runtime.InteropServices.PosixSignalRegistration.Create(System.Runtime.InteropServices.PosixSignal.SIGTERM, fun _ -> stop ())
    for p in children do p.WaitForExit()
    let failed = children |> List.indexed |> List.filter (fun (_, p) -> p.ExitCode <> 0)
    for i, p in failed do eprintfn "job %d exited with %d: nothing merged" i p.ExitCode
    let code = if failed.IsEmpty then merge { o with Partials = Some dir } registry else 1
    for p in children do p.Dispose()
    code

let private run (o: Options) (registry: Experiment list) =
    let share =
        match o.Shard with
        | Some text ->
            match Shards.parse text with
            | Ok s -> Some { s with Count = defaultArg o.ShardCount s.Count }
            | Error e -> failwith e
        | None ->
            let getenv name = match Environment.GetEnvironmentVariable name with null | "" -> None | v -> Some v
            match Shards.fromEnvironment getenv o.ShardCount with
            | Ok s -> s
            | Error e -> failwith e
    let chosen = choose registry o.Only
    let all = [ for e in chosen do for u in e.Units o.Scale -> e, u ]
    match share with
    | None ->
        log $"{all.Length} units in {chosen.Length} experiments"
        let report = Runner.runAll log o.Out o.Scale chosen
        log $"report written to {report}"
        0
    | Some share ->
        let mine = Shards.assign share Shards.unitCost all
        log $"shard {share.Index}/{share.Count} ({share.Source}): {mine.Length} of {all.Length} units"
        let records = Runner.runUnits log $"shard {share.Index}/{share.Count} " mine
        let file : Shards.ShardFile =
            { Format = Shards.format; Suite = o.Suite; Scale = Shards.scaleName o.Scale; Shard = share.Index; Count = share.Count
              Experiments = chosen |> List.map (fun e -> e.Name); Units = records }
        let path = Shards.write (o.Partials |> Option.defaultValue (Path.Combine(o.Out, "partials"))) file
        log $"shard {share.Index}/{share.Count}: partials in {path}; when every shard is done, run `merge --out {o.Out}`"
        0

[<EntryPoint>]
let main argv =
    let o = parseArgs argv
    let registry =
        match o.Suite with
        | "main" -> experiments
        | "smoke" -> smokeExperiments
        | other -> failwith $"unknown suite '{other}'; suites: main, smoke"
    Runtime.TorchRuntime.EnsureLoaded()
    if o.List then list o registry
    elif o.Merge then merge o registry
    elif o.Jobs > 1 then
        if o.Shard.IsSome || o.ShardCount.IsSome then failwith "--jobs runs its own shards; give --jobs or --shard / --shard-count, not both"
        runJobs o argv registry
    else
        printfn "MechInterp experiments, %A scale, %d threads, artifacts in %s" o.Scale Settings.Threads o.Out
        smokeForward ()
        run o registry
