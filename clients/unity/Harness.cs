// A console harness for ThermoclineClient: tests/test_unity_client.py compiles it with the core
// (mcs) and drives it on Mono against a real `thermocline serve`.
//
//   mono harness.exe ENDPOINT API_KEY PLAYER_ID
//
// Commands, one per line on standard input:
//   track N   track N events (level_up, purchase, session_end, social in turn); prints
//             "TRACKED id:type ..." with every event_id it tracked
//   raw       track one pre-serialized event (epoch-ms event_time), then a string that is not
//             a JSON object (refused by Track with a log line); prints "TRACKED id:type"
//   bad N     track N events and break the body of the next request (its JSON array cut short,
//             as a faulty proxy might): the service answers 400 and the client drops the batch
//   flush     FlushAsync; prints "FLUSHED true|false pending=N"
//   stats     prints "STATS pending=N delivered=N dropped=N failed_attempts=N"
//   quit      Stop (5 s to send what is left); prints "STOPPED ..." and exits 0
// and prints, as they happen: "LOG level message", "BATCH ...", "STREAM connected|lost",
// "PUSH frame". Times (sent=, at=) are seconds since the harness started, on one clock.

using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.IO;
using System.IO.Compression;
using System.Net.Http;
using System.Text;
using System.Threading;
using System.Threading.Tasks;

namespace Thermocline.Harness
{
    // Breaks the next POST's body when armed: gunzips it, cuts the array's closing ']', gzips it
    // again. The real batch, with its real events, reaches the service unframed.
    sealed class BreakNextBody : DelegatingHandler
    {
        int _armed;
        public BreakNextBody() : base(new HttpClientHandler()) { }
        public void Arm() { Interlocked.Exchange(ref _armed, 1); }

        protected override async Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancel)
        {
            Program.Print("SEND at=" + Program.Now());
            if (request.Method == HttpMethod.Post && Interlocked.Exchange(ref _armed, 0) == 1)
            {
                byte[] body = await request.Content.ReadAsByteArrayAsync();
                string json;
                using (var gzip = new GZipStream(new MemoryStream(body), CompressionMode.Decompress))
                using (var reader = new StreamReader(gzip, Encoding.UTF8))
                    json = reader.ReadToEnd();
                string broken = json.Substring(0, json.LastIndexOf(']'));
                var output = new MemoryStream();
                using (var gzip = new GZipStream(output, CompressionMode.Compress, true))
                {
                    byte[] bytes = Encoding.UTF8.GetBytes(broken);
                    gzip.Write(bytes, 0, bytes.Length);
                }
                var content = new ByteArrayContent(output.ToArray());
                foreach (var header in request.Content.Headers)
                    if (header.Key != "Content-Length") content.Headers.TryAddWithoutValidation(header.Key, header.Value);
                request.Content = content;
                Program.Print("BROKEN body of " + json.Length + " characters cut to " + broken.Length);
            }
            return await base.SendAsync(request, cancel);
        }
    }

    static class Program
    {
        static readonly Stopwatch Clock = Stopwatch.StartNew();
        static readonly object Out = new object();
        static readonly string[] Types = { "level_up", "purchase", "session_end", "social" };
        static int _sequence;
        // A field every event carries: its JSON escapes must survive the trip.
        const string Note = "quote \" backslash \\ newline \n done";

        public static string Now()
        {
            return Clock.Elapsed.TotalSeconds.ToString("0.000", CultureInfo.InvariantCulture);
        }

        public static void Print(string line)
        {
            lock (Out)
            {
                Console.Out.WriteLine(line.Replace('\n', ' ').Replace('\r', ' '));
                Console.Out.Flush();
            }
        }

        static int Main(string[] args)
        {
            if (args.Length != 3)
            {
                Console.Error.WriteLine("usage: harness.exe ENDPOINT API_KEY PLAYER_ID");
                return 2;
            }
            return Run(args[0], args[1], args[2]).GetAwaiter().GetResult();
        }

        static async Task<int> Run(string endpoint, string apiKey, string player)
        {
            var breaker = new BreakNextBody();
            var client = new ThermoclineClient(new ThermoclineOptions
            {
                Endpoint = endpoint,
                ApiKey = apiKey,
                PlayerId = player,
                BatchSize = 100,
                // Short, so that a test of a few seconds sees several rounds.
                FlushInterval = TimeSpan.FromSeconds(1),
                BackoffBase = TimeSpan.FromMilliseconds(250),
                BackoffMax = TimeSpan.FromSeconds(2),
                RequestTimeout = TimeSpan.FromSeconds(20),
                MaxQueue = 5000,
                Handler = breaker,
                Log = (level, message) => Print("LOG " + level + " " + message),
            });
            client.StreamChanged += connected => Print("STREAM " + (connected ? "connected" : "lost"));
            client.Updated += frame => Print("PUSH " + frame);
            client.BatchCompleted += r => Print(string.Format(CultureInfo.InvariantCulture,
                "BATCH status={0} events={1} outcome={2} dead={3} retry_after={4:0.000} retry_in={5:0.000} pending={6} at={7} error={8}",
                r.Status, r.Events, r.Outcome, r.Dead, r.RetryAfter.TotalSeconds, r.RetryIn.TotalSeconds,
                r.Pending, Now(), r.Error ?? "-"));
            client.Start();
            Print("READY");

            string line;
            while ((line = Console.In.ReadLine()) != null)
            {
                string[] words = line.Trim().Split(new[] { ' ' }, StringSplitOptions.RemoveEmptyEntries);
                if (words.Length == 0) continue;
                switch (words[0])
                {
                    case "track":
                        TrackSome(client, player, int.Parse(words[1], CultureInfo.InvariantCulture), "TRACKED");
                        break;
                    case "raw":
                        int n = Interlocked.Increment(ref _sequence);
                        string id = player + "-" + n.ToString("D5", CultureInfo.InvariantCulture);
                        string json = "{\"event_id\":\"" + id + "\",\"player_id\":\"" + player
                            + "\",\"event_time\":" + DateTimeOffset.UtcNow.ToUnixTimeMilliseconds()
                            + ",\"event_type\":\"level_up\",\"level\":7,\"note\":" + Json.WriteValue(Note) + "}";
                        if (!client.Track(json)) throw new InvalidOperationException("not tracked: " + json);
                        Print("TRACKED " + id + ":level_up");
                        if (client.Track("{\"event_id\": \"" + id + "-cut")) throw new InvalidOperationException("tracked a cut string");
                        break;
                    case "bad":
                        // Alone in its request: what was queued goes first.
                        bool before = await client.FlushAsync();
                        TrackSome(client, player, int.Parse(words[1], CultureInfo.InvariantCulture), "TRACKED-BAD");
                        breaker.Arm();
                        bool after = await client.FlushAsync();
                        Print("FLUSHED " + (before && after).ToString().ToLowerInvariant() + " pending=" + client.Pending);
                        break;
                    case "flush":
                        bool all = await client.FlushAsync();
                        Print("FLUSHED " + all.ToString().ToLowerInvariant() + " pending=" + client.Pending);
                        break;
                    case "stats":
                        Print(Stats(client));
                        break;
                    case "quit":
                        bool empty = client.Stop(TimeSpan.FromSeconds(5));
                        Print("STOPPED empty=" + empty.ToString().ToLowerInvariant() + " " + Stats(client).Substring(6));
                        client.Dispose();
                        return 0;
                    default:
                        Print("UNKNOWN " + line);
                        break;
                }
            }
            client.Dispose();
            return 1;  // standard input closed without "quit"
        }

        static void TrackSome(ThermoclineClient client, string player, int count, string label)
        {
            var ids = new StringBuilder(label);
            for (int i = 0; i < count; i++)
            {
                int n = Interlocked.Increment(ref _sequence);
                string type = Types[n % Types.Length];
                string id = player + "-" + n.ToString("D5", CultureInfo.InvariantCulture);
                var fields = new Dictionary<string, object>
                {
                    { "event_id", id },
                    { "event_type", type },
                    { "level", n % 50 },
                    { "session_id", "s-" + (n / 40) },
                    { "note", Note },
                };
                if (type == "purchase") fields["amount"] = 4.99;
                if (!client.Track(fields)) throw new InvalidOperationException("not tracked: " + id);
                ids.Append(' ').Append(id).Append(':').Append(type);
            }
            Print(ids.ToString());
        }

        static string Stats(ThermoclineClient client)
        {
            return "STATS pending=" + client.Pending + " delivered=" + client.Delivered + " dropped=" + client.Dropped
                + " failed_attempts=" + client.FailedAttempts;
        }
    }
}
