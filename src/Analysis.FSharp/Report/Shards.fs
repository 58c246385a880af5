/// Splitting the main job's work across processes: which share of the units a shard runs (from `--shard i/n` or
/// from the environment a scheduler sets), the partial file it writes, and every check `merge` makes before it
/// combines anything.
module MechInterp.Analysis.Report.Shards

open System
open System.IO
open System.Text.Json
open System.Text.Json.Nodes

/// One share of the work: shard `Index` (from 0) of `Count`, and where that came from, for the log.
type Share = { Index: int; Count: int; Source: string }

/// "i/n", 0 ≤ i < n.
let parse (text: string) : Result<Share, string> =
    match text.Split('/') with
    | [| i; n |] ->
        match Int32.TryParse i, Int32.TryParse n with
        | (true, i), (true, n) when n >= 1 && i >= 0 && i < n -> Ok { Index = i; Count = n; Source = $"--shard {text}" }
        | (true, i), (true, n) -> Error $"--shard {text}: the index must be in 0 .. count − 1 and the count at least 1 (got {i} of {n})"
        | _ -> Error $"--shard {text}: expected i/n with whole numbers, e.g. --shard 0/4"
    | _ -> Error $"--shard {text}: expected i/n, e.g. --shard 0/4"

/// The share a scheduler gives this process, if any. Slurm job arrays: (SLURM_ARRAY_TASK_ID − SLURM_ARRAY_TASK_MIN)
/// / SLURM_ARRAY_TASK_STEP of SLURM_ARRAY_TASK_COUNT. Kubernetes Indexed Jobs: JOB_COMPLETION_INDEX of `count`
/// (`--shard-count`), else of MECHINTERP_SHARD_COUNT (a Job sets neither count for its pods).
let fromEnvironment (getenv: string -> string option) (count: int option) : Result<Share option, string> =
    let number name =
        match getenv name with
        | None -> Ok None
        | Some v ->
            match Int32.TryParse v with
            | true, x -> Ok(Some x)
            | _ -> Error $"{name}={v} is not a whole number"
    let within (share: Share) =
        if share.Count < 1 || share.Index < 0 || share.Index >= share.Count then
            Error $"{share.Source} gives shard {share.Index} of {share.Count}, outside 0 .. count − 1"
        else Ok(Some share)
    match number "SLURM_ARRAY_TASK_ID", number "JOB_COMPLETION_INDEX" with
    | Error e, _ | _, Error e -> Error e
    | Ok(Some id), _ ->
        match number "SLURM_ARRAY_TASK_MIN", number "SLURM_ARRAY_TASK_STEP", number "SLURM_ARRAY_TASK_COUNT" with
        | Ok min, Ok step, Ok(Some n) ->
            let min, step = defaultArg min 0, max 1 (defaultArg step 1)
            within { Index = (id - min) / step; Count = defaultArg count n
                     Source = $"Slurm: SLURM_ARRAY_TASK_ID {id} − SLURM_ARRAY_TASK_MIN {min}, step {step}, of SLURM_ARRAY_TASK_COUNT {n}" }
        | Ok _, Ok _, Ok None ->
            match count with
            | Some n -> within { Index = id; Count = n; Source = $"Slurm: SLURM_ARRAY_TASK_ID {id} of --shard-count {n}" }
            | None -> Error "SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not; pass --shard-count N"
        | Error e, _, _ | _, Error e, _ | _, _, Error e -> Error e
    | Ok None, Ok(Some index) ->
        match count, number "MECHINTERP_SHARD_COUNT" with
        | Some n, _ -> within { Index = index; Count = n; Source = $"Kubernetes: JOB_COMPLETION_INDEX {index} of --shard-count {n}" }
        | None, Ok(Some n) -> within { Index = index; Count = n; Source = $"Kubernetes: JOB_COMPLETION_INDEX {index} of MECHINTERP_SHARD_COUNT {n}" }
        | None, Ok None -> Error "JOB_COMPLETION_INDEX is set but no count: pass --shard-count N or set MECHINTERP_SHARD_COUNT (the Job's completions)"
        | None, Error e -> Error e
    | Ok None, Ok None -> Ok None

/// The cost a unit is balanced by, beside whatever names its experiment (the experiment or its name).
let unitCost (_: 'e, u: WorkUnit) = u.Cost

/// The shard of each unit among `count`, balanced by cost: the costliest unit first, each to the shard with the least
/// cost so far (the lowest index on a tie), the longest-processing-time rule. Equal costs give round robin (unit k to
/// shard k mod count). Every process derives the same list from the same experiments and scale, so the shares are
/// disjoint, cover it, and agree with `read`.
let owners (count: int) (cost: 'a -> float) (units: 'a list) : int list =
    let load = Array.zeroCreate<float> count
    let owner = Array.zeroCreate<int> units.Length
    let costs = units |> List.map (fun u -> let c = cost u in if Double.IsFinite c && c > 0.0 then c else 1.0) |> Array.ofList
    for k in Array.init costs.Length id |> Array.sortBy (fun k -> -costs.[k], k) do
        let shard = Array.init count id |> Array.minBy (fun i -> load.[i], i)
        owner.[k] <- shard
        load.[shard] <- load.[shard] + costs.[k]
    List.ofArray owner

/// The units of one share, in their order, by `owners`.
let assign (share: Share) (cost: 'a -> float) (units: 'a list) : 'a list =
    List.zip (owners share.Count cost units) units |> List.filter (fun (o, _) -> o = share.Index) |> List.map snd


/// One unit's partial as a shard file holds it.
type UnitRecord =
    { Experiment: string
      Id: string
      Setting: string
      Seeds: int list
      Seconds: float
      Partial: JsonNode }

/// What one shard writes: <out>/partials/shard-<i>-of-<n>.json.
type ShardFile =
    { Format: string
      Suite: string
      Scale: string
      Shard: int
      Count: int
      Experiments: string list
      Units: UnitRecord list }

let format = "mechinterp-shard/1"

let fileName (share: Share) = $"shard-{share.Index}-of-{share.Count}.json"

let scaleName = function Quick -> "quick" | Full -> "full"

/// Writes a shard's partials atomically; returns the path.
let write (dir: string) (file: ShardFile) =
    Directory.CreateDirectory dir |> ignore
    let path = Path.Combine(dir, $"shard-{file.Shard}-of-{file.Count}.json")
    MechInterp.IO.AtomicFile.WriteAllText(path, JsonSerializer.Serialize(file, Partial.options))
    path

/// Everything merge needs, once every check has passed: the scale, the experiments in order, each one's partials by unit id.
type Merged =
    { Scale: Scale
      Experiments: Experiment list
      Partials: Map<string, Map<string, JsonNode>> }

/// Reads every shard file in `dir` and checks them against each other and against the units the experiments declare:
/// one suite, scale and experiment list; one count; each shard 0 .. n − 1 exactly once; every unit exactly once,
/// in the shard it belongs to, with the seeds it declares; no seed twice in one setting. Every problem is reported.
let read (dir: string) (suite: string) (registry: Experiment list) : Result<Merged, string list> =
    let files =
        if Directory.Exists dir then Directory.GetFiles(dir, "shard-*.json") |> Array.sort |> List.ofArray else []
    if files.IsEmpty then Error [ $"no shard files (shard-<i>-of-<n>.json) in {dir}" ] else
    let parsed =
        files |> List.map (fun path ->
            let name = Path.GetFileName path
            try
                match JsonSerializer.Deserialize<ShardFile>(File.ReadAllText path, Partial.options) with
                | null -> Error $"{name} is empty"
                | f when f.Format <> format -> Error $"{name} is not a shard file of this version (format {f.Format}, expected {format})"
                | f -> Ok(name, f)
            with e -> Error $"{name} could not be read: {e.Message}")
    let unreadable = parsed |> List.choose (function Error e -> Some e | Ok _ -> None)
    if not unreadable.IsEmpty then Error unreadable else
    let shards = parsed |> List.choose (function Ok x -> Some x | Error _ -> None)
    let errors = ResizeArray<string>()
    let disagree what (get: ShardFile -> string) =
        match shards |> List.groupBy (snd >> get) with
        | [ _ ] -> ()
        | groups ->
            let says = groups |> List.map (fun (v, fs) -> $"""{String.Join(", ", fs |> List.map fst)} say {what} {v}""")
            errors.Add $"""the shards disagree on the {what}: {String.Join("; ", says)}"""
    disagree "shard count" (fun f -> string f.Count)
    disagree "scale" (fun f -> f.Scale)
    disagree "suite" (fun f -> f.Suite)
    disagree "experiment list" (fun f -> String.Join(",", f.Experiments))
    for name, f in shards do
        if name <> $"shard-{f.Shard}-of-{f.Count}.json" then
            errors.Add $"{name} holds shard {f.Shard} of {f.Count}: the file name and its contents disagree"
    if errors.Count > 0 then Error(List.ofSeq errors) else
    let first = snd shards.Head
    let count = first.Count
    if first.Suite <> suite then errors.Add $"the shards ran suite '{first.Suite}', this merge is for '{suite}'"
    for (index, group) in shards |> List.groupBy (fun (_, f) -> f.Shard) do
        if group.Length > 1 then errors.Add $"""shard {index} of {count} appears twice: {String.Join(", ", group |> List.map fst)}"""
    for index in 0 .. count - 1 do
        if shards |> List.forall (fun (_, f) -> f.Shard <> index) then
            errors.Add $"shard {index} of {count} is missing: no shard-{index}-of-{count}.json in {dir}"
    let scale = if first.Scale = scaleName Full then Full else Quick
    let experiments =
        first.Experiments |> List.choose (fun n ->
            match registry |> List.tryFind (fun e -> e.Name = n) with
            | Some e -> Some e
            | None -> errors.Add $"the shards ran experiment '{n}', which this program does not have"; None)
    if experiments.Length <> first.Experiments.Length then Error(List.ofSeq errors) else
    let expected = [ for e in experiments do for u in e.Units scale -> e.Name, u ]
    let owner = List.zip (expected |> List.map (fun (e, u) -> e, u.Id)) (owners count unitCost expected) |> Map.ofList
    let declared = expected |> List.map (fun (e, u) -> (e, u.Id), u) |> Map.ofList
    let found = [ for name, f in shards do for r in f.Units -> name, f.Shard, r ]
    for (key, copies) in found |> List.groupBy (fun (_, _, r) -> r.Experiment, r.Id) do
        let e, id = key
        match declared.TryFind key with
        | None ->
            let where = String.Join(", ", copies |> List.map (fun (n, _, _) -> n))
            errors.Add $"unit {e}/{id} (in {where}) is not a unit of {e} at {scaleName scale} scale"
        | Some u ->
            if copies.Length > 1 then
                errors.Add $"""unit {e}/{id} appears {copies.Length} times: in {String.Join(", ", copies |> List.map (fun (n, _, _) -> n))}"""
            for n, shard, r in copies do
                if shard <> owner.[key] then errors.Add $"unit {e}/{id} is in {n} but belongs to shard {owner.[key]} of {count}"
                if r.Seeds <> u.Seeds then errors.Add $"unit {e}/{id} in {n} trained seeds {r.Seeds}, the experiment declares {u.Seeds}"
    for (e, u) in expected do
        if found |> List.forall (fun (_, _, r) -> (r.Experiment, r.Id) <> (e, u.Id)) then
            errors.Add $"unit {e}/{u.Id} is missing: shard {owner.[(e, u.Id)]} of {count} does not hold it"
    for ((e, setting), records) in found |> List.groupBy (fun (_, _, r) -> r.Experiment, r.Setting) do
        for (seed, holders) in records |> List.collect (fun (n, _, r) -> r.Seeds |> List.map (fun s -> s, (n, r.Id))) |> List.groupBy fst do
            if holders.Length > 1 then
                let where = holders |> List.map (fun (_, (n, id)) -> $"{id} in {n}")
                errors.Add $"""seed {seed} of {e}/{setting} is trained twice: {String.Join("; ", where)}"""
    if errors.Count > 0 then Error(List.ofSeq (Seq.distinct errors)) else
    Ok { Scale = scale
         Experiments = experiments
         Partials =
           found
           |> List.groupBy (fun (_, _, r) -> r.Experiment)
           |> List.map (fun (e, rs) -> e, rs |> List.map (fun (_, _, r) -> r.Id, r.Partial) |> Map.ofList)
           |> Map.ofList }
