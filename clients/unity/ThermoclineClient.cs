// Thermocline's game client: the transport-independent core, plain .NET 4.x (C# 7.0), no Unity.
//
// Events are queued in memory, sent to the ingestion service (`thermocline serve`,
// POST /v1/events) in gzip-compressed JSON arrays of up to 100, and retried with exponential
// backoff that honors the service's Retry-After. A WebSocket listener receives the updates the
// service pushes for the player (GET /v1/stream/{player_id}) and reconnects with backoff.
// ThermoclineBehaviour.cs wraps it for Unity; README.md beside this file says how to use it.
//
// Threads: Track, Flush, FlushAsync and Stop may be called from any thread. Sending and
// listening run on the thread pool; every await uses ConfigureAwait(false), so a caller that
// blocks on FlushAsync or Stop from a thread with a synchronization context (Unity's main
// thread) cannot deadlock. Events (Updated, StreamChanged, BatchCompleted) and the log callback
// are raised on thread-pool threads: a game hands them to its main thread (the behaviour does).

using System;
using System.Collections;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.IO.Compression;
using System.Net;
using System.Net.Http;
using System.Net.Http.Headers;
using System.Net.WebSockets;
using System.Text;
using System.Threading;
using System.Threading.Tasks;

namespace Thermocline
{
    public enum LogLevel { Debug, Info, Warning, Error }

    /// <summary>Settings of a <see cref="ThermoclineClient"/>; checked by its constructor.</summary>
    public sealed class ThermoclineOptions
    {
        /// <summary>The service's base address, e.g. https://ingest.example.com.</summary>
        public string Endpoint = "http://127.0.0.1:8080";
        /// <summary>Sent as X-API-Key with every request.</summary>
        public string ApiKey;
        /// <summary>The player: filled into tracked dictionaries without a player_id, and whose
        /// pushed updates the listener receives (null: no listener).</summary>
        public string PlayerId;
        /// <summary>Open the push stream for PlayerId while started.</summary>
        public bool Listen = true;
        /// <summary>Events per request, 1..100: small enough that a retried request is cheap
        /// and far below the service's default limit (1000 events, 4 MB).</summary>
        public int BatchSize = 100;
        /// <summary>How often queued events are sent (a full batch goes at once).</summary>
        public TimeSpan FlushInterval = TimeSpan.FromSeconds(5);
        /// <summary>Events kept at most while the service cannot be reached; when full, the
        /// oldest is dropped (with a log line). 10,000 small events are a few MB.</summary>
        public int MaxQueue = 10000;
        /// <summary>First retry delay; doubled per failure in a row (jittered), up to BackoffMax.
        /// A Retry-After from the service is waited at least.</summary>
        public TimeSpan BackoffBase = TimeSpan.FromSeconds(1);
        public TimeSpan BackoffMax = TimeSpan.FromSeconds(60);
        /// <summary>One request's limit: above the service's delivery timeout (10 s by default),
        /// which it may spend waiting for Kafka before it answers 503.</summary>
        public TimeSpan RequestTimeout = TimeSpan.FromSeconds(30);
        /// <summary>Compress request bodies (Content-Encoding: gzip).</summary>
        public bool Gzip = true;
        /// <summary>Where log lines go (null: nowhere). Called on any thread.</summary>
        public Action<LogLevel, string> Log;
        /// <summary>Current UTC time, for the event_time of tracked dictionaries (null: the
        /// system clock).</summary>
        public Func<DateTime> Clock;
        /// <summary>HTTP transport (null: HttpClientHandler), e.g. for a proxy or certificate
        /// checks; the client disposes it.</summary>
        public HttpMessageHandler Handler;
    }

    /// <summary>What became of one request's events.</summary>
    public enum BatchOutcome
    {
        /// <summary>The service acknowledged them (dead letters included: see Dead).</summary>
        Delivered,
        /// <summary>Not accepted, kept in the queue: retried after RetryIn.</summary>
        Kept,
        /// <summary>Refused for good (400, 413, 415): dropped, with a log line.</summary>
        Dropped,
    }

    /// <summary>One request, as reported by <see cref="ThermoclineClient.BatchCompleted"/>.</summary>
    public sealed class BatchResult
    {
        /// <summary>HTTP status, 0 when no answer arrived (network error, timeout).</summary>
        public int Status;
        public int Events;
        public BatchOutcome Outcome;
        /// <summary>Events the service dead-lettered (a 200: they are in its dead-letter
        /// topic with a reason, not retried).</summary>
        public int Dead;
        /// <summary>The service's Retry-After (a 429 or 503), else zero.</summary>
        public TimeSpan RetryAfter;
        /// <summary>How long the client waits before its next attempt (Kept only).</summary>
        public TimeSpan RetryIn;
        /// <summary>The service's reason or the transport error, else null.</summary>
        public string Error;
        /// <summary>Events queued or in flight once this request was settled.</summary>
        public int Pending;
    }

    /// <summary>Queues events and sends them to the Thermocline service; receives the player's
    /// pushed updates. See the file's header for threads.</summary>
    public sealed class ThermoclineClient : IDisposable
    {
        /// <summary>The largest BatchSize.</summary>
        public const int MaxBatchSize = 100;
        public const string ApiKeyHeader = "X-API-Key";
        // A Retry-After beyond this is a misconfigured proxy, not the service: capped.
        static readonly TimeSpan MaxRetryAfter = TimeSpan.FromMinutes(10);
        // A pushed message larger than this is not an update: the connection is dropped.
        const int MaxPushBytes = 1 << 20;

        readonly ThermoclineOptions _options;
        readonly Uri _eventsUri;
        readonly Uri _streamUri;
        readonly HttpClient _http;
        readonly Func<DateTime> _clock;

        readonly object _lock = new object();
        readonly LinkedList<string> _queue = new LinkedList<string>();
        int _inFlight;
        long _delivered, _dropped, _failedAttempts;
        int _queueDrops;  // dropped because the queue was full, for throttled log lines

        readonly SemaphoreSlim _sendGate = new SemaphoreSlim(1, 1);
        readonly SemaphoreSlim _wake = new SemaphoreSlim(0);
        readonly Random _random = new Random();
        int _failures;  // failed sends in a row (under _sendGate)
        // No attempt before this point of _uptime (a backoff or a Retry-After in force). A
        // monotonic clock: a game may change the wall clock under us.
        long _notBeforeTicks;
        readonly System.Diagnostics.Stopwatch _uptime = System.Diagnostics.Stopwatch.StartNew();

        CancellationTokenSource _stop;
        Task _sender, _listener;
        bool _disposed;

        /// <summary>A text frame the service pushed for the player (JSON, e.g. an alert).</summary>
        public event Action<string> Updated;
        /// <summary>The push stream connected (true) or was lost (false).</summary>
        public event Action<bool> StreamChanged;
        /// <summary>Each request's outcome, after the queue was updated.</summary>
        public event Action<BatchResult> BatchCompleted;

        public ThermoclineClient(ThermoclineOptions options)
        {
            if (options == null) throw new ArgumentNullException("options");
            if (string.IsNullOrEmpty(options.ApiKey))
                throw new ArgumentException("ApiKey: the service refuses requests without one");
            if (options.BatchSize < 1 || options.BatchSize > MaxBatchSize)
                throw new ArgumentOutOfRangeException("BatchSize", options.BatchSize,
                    "expected 1.." + MaxBatchSize);
            if (options.MaxQueue < options.BatchSize)
                throw new ArgumentOutOfRangeException("MaxQueue", options.MaxQueue,
                    "expected at least BatchSize (" + options.BatchSize + ")");
            if (options.FlushInterval <= TimeSpan.Zero || options.BackoffBase <= TimeSpan.Zero
                || options.BackoffMax < options.BackoffBase || options.RequestTimeout <= TimeSpan.Zero)
                throw new ArgumentException(
                    "FlushInterval, BackoffBase, RequestTimeout: expected > 0; BackoffMax >= BackoffBase");
            Uri baseUri;
            if (!Uri.TryCreate(options.Endpoint.TrimEnd('/') + "/", UriKind.Absolute, out baseUri)
                || (baseUri.Scheme != "http" && baseUri.Scheme != "https"))
                throw new ArgumentException("Endpoint: expected an http(s) URL, got " + options.Endpoint);
            _options = options;
            _clock = options.Clock ?? (() => DateTime.UtcNow);
            _eventsUri = new Uri(baseUri, "v1/events");
            if (!string.IsNullOrEmpty(options.PlayerId))
            {
                var ws = new UriBuilder(new Uri(baseUri, "v1/stream/" + Uri.EscapeDataString(options.PlayerId)));
                ws.Scheme = baseUri.Scheme == "https" ? "wss" : "ws";
                _streamUri = ws.Uri;
            }
            _http = new HttpClient(options.Handler ?? new HttpClientHandler(), true);
            _http.Timeout = options.RequestTimeout;
        }

        // -- state --------------------------------------------------------------------------

        /// <summary>Events queued or being sent.</summary>
        public int Pending { get { lock (_lock) return _queue.Count + _inFlight; } }
        /// <summary>Events the service acknowledged (each counted once).</summary>
        public long Delivered { get { return Interlocked.Read(ref _delivered); } }
        /// <summary>Events dropped: refused for good, or pushed out of a full queue.</summary>
        public long Dropped { get { return Interlocked.Read(ref _dropped); } }
        /// <summary>Requests that failed and were (or will be) retried.</summary>
        public long FailedAttempts { get { return Interlocked.Read(ref _failedAttempts); } }

        // -- tracking -----------------------------------------------------------------------

        /// <summary>Queue an event given as a flat dictionary (string, number, bool, null,
        /// DateTime values). event_id (a new GUID), player_id (PlayerId) and event_time (now)
        /// are filled in when absent. Returns false, with a log line, when it cannot be written.</summary>
        public bool Track(IDictionary<string, object> fields)
        {
            if (fields == null) throw new ArgumentNullException("fields");
            var withDefaults = new Dictionary<string, object>(fields);
            if (!withDefaults.ContainsKey("event_id")) withDefaults["event_id"] = Guid.NewGuid().ToString("N");
            if (!withDefaults.ContainsKey("player_id") && _options.PlayerId != null)
                withDefaults["player_id"] = _options.PlayerId;
            if (!withDefaults.ContainsKey("event_time")) withDefaults["event_time"] = _clock();
            string json;
            try
            {
                json = Json.WriteObject(withDefaults);
            }
            catch (ArgumentException e)
            {
                Log(LogLevel.Error, "event not tracked: " + e.Message);
                return false;
            }
            Enqueue(json);
            return true;
        }

        /// <summary>Queue an event already serialized as one JSON object. A string that is not
        /// one is refused here, with a log line: sent, it could make the service refuse its
        /// whole batch. The service dead-letters an object that breaks its schema (missing
        /// event_id, player_id or event_time; a field of the wrong type).</summary>
        public bool Track(string json)
        {
            if (json == null) throw new ArgumentNullException("json");
            string problem = Json.CheckObject(json);
            if (problem != null)
            {
                Log(LogLevel.Error, "event not tracked: not one JSON object (" + problem + "): "
                    + Abbreviate(json, 80));
                return false;
            }
            Enqueue(json.Trim());
            return true;
        }

        void Enqueue(string json)
        {
            bool full;
            lock (_lock)
            {
                _queue.AddLast(json);
                TrimQueue();
                full = _queue.Count >= _options.BatchSize;
            }
            if (full && BackoffRemaining() == TimeSpan.Zero) Wake();
        }

        // Under _lock: drop the oldest events beyond MaxQueue (in-flight ones count).
        void TrimQueue()
        {
            int over = _queue.Count + _inFlight - _options.MaxQueue;
            if (over <= 0) return;
            int dropped = 0;
            while (over-- > 0 && _queue.Count > 0)
            {
                _queue.RemoveFirst();
                dropped++;
            }
            Interlocked.Add(ref _dropped, dropped);
            int before = _queueDrops;
            _queueDrops += dropped;
            // One line at the first drop and at each power of ten: an outage does not flood the log.
            if (before == 0 || Magnitude(before) != Magnitude(_queueDrops))
                Log(LogLevel.Warning, "queue full (" + _options.MaxQueue + " events): dropped the oldest "
                    + dropped + " (" + _queueDrops + " dropped so far)");
        }

        static int Magnitude(int n) { return n <= 0 ? 0 : (int)Math.Floor(Math.Log10(n)); }

        // -- life cycle ---------------------------------------------------------------------

        /// <summary>Start sending every FlushInterval, and listening when PlayerId is set.</summary>
        public void Start()
        {
            lock (_lock)
            {
                if (_disposed) throw new ObjectDisposedException("ThermoclineClient");
                if (_stop != null) return;
                _stop = new CancellationTokenSource();
                var token = _stop.Token;
                _sender = Task.Run(() => RunSenderAsync(token));
                if (_streamUri != null && _options.Listen)
                    _listener = Task.Run(() => RunListenerAsync(token));
            }
        }

        /// <summary>Stop sending and listening, then try once more to send what is queued,
        /// waiting up to <paramref name="flushTimeout"/>. Returns whether nothing is left;
        /// what is left stays queued (Start again to resume).</summary>
        public bool Stop(TimeSpan flushTimeout)
        {
            CancellationTokenSource stop;
            Task[] running;
            lock (_lock)
            {
                stop = _stop;
                _stop = null;
                running = new[] { _sender, _listener };
                _sender = _listener = null;
            }
            if (stop != null)
            {
                stop.Cancel();
                foreach (var task in running)
                {
                    try { if (task != null) task.Wait(TimeSpan.FromSeconds(5)); }
                    catch (AggregateException) { }  // both loops catch their own: not expected
                }
            }
            if (flushTimeout <= TimeSpan.Zero) return Pending == 0;
            // Not disposed here: a request still running at the limit is cancelled by it, and
            // its events are put back in the queue.
            var limit = new CancellationTokenSource(flushTimeout);
            try
            {
                return FlushAsync(limit.Token).Wait(flushTimeout + TimeSpan.FromSeconds(1)) && Pending == 0;
            }
            catch (AggregateException)
            {
                return false;  // cancelled at the time limit: the events stay queued
            }
        }

        public void Dispose()
        {
            if (_disposed) return;
            Stop(TimeSpan.Zero);
            _disposed = true;
            _http.Dispose();
        }

        // -- sending ------------------------------------------------------------------------

        /// <summary>Send now what is queued (once started; else FlushAsync does it).</summary>
        public void Flush()
        {
            if (_stop != null) Wake();
            else FlushAsync().ContinueWith(t => { var unused = t.Exception; },
                TaskContinuationOptions.OnlyOnFaulted);
        }

        /// <summary>Send the events queued now, batch after batch. True when all of them were
        /// settled (delivered, or dropped as refused for good); false when a send failed or a
        /// backoff (a Retry-After) is in force: they stay queued for the next attempt.</summary>
        public async Task<bool> FlushAsync(CancellationToken cancel = default(CancellationToken))
        {
            await _sendGate.WaitAsync(cancel).ConfigureAwait(false);
            try
            {
                int budget = Pending;
                while (budget > 0)
                {
                    if (BackoffRemaining() > TimeSpan.Zero) return false;
                    var result = await SendOneAsync(cancel).ConfigureAwait(false);
                    if (result == null) return true;
                    if (result.Outcome == BatchOutcome.Kept) return false;
                    budget -= result.Events;
                }
                return true;
            }
            finally
            {
                _sendGate.Release();
            }
        }

        void Wake()
        {
            if (_wake.CurrentCount == 0) _wake.Release();
        }

        TimeSpan BackoffRemaining()
        {
            long remaining = Interlocked.Read(ref _notBeforeTicks) - _uptime.Elapsed.Ticks;
            return remaining > 0 ? TimeSpan.FromTicks(remaining) : TimeSpan.Zero;
        }

        async Task RunSenderAsync(CancellationToken stop)
        {
            while (!stop.IsCancellationRequested)
            {
                TimeSpan wait = BackoffRemaining();
                if (wait == TimeSpan.Zero)
                {
                    bool batchReady;
                    lock (_lock) batchReady = _queue.Count >= _options.BatchSize;
                    wait = batchReady ? TimeSpan.Zero : _options.FlushInterval;
                }
                try
                {
                    if (wait > TimeSpan.Zero) await _wake.WaitAsync(wait, stop).ConfigureAwait(false);
                    await FlushAsync(stop).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    return;
                }
                catch (Exception e)  // a bug of ours: logged, and the loop goes on
                {
                    Log(LogLevel.Error, "sender: " + e);
                    await DelayQuietly(_options.BackoffMax, stop).ConfigureAwait(false);
                }
            }
        }

        // One request with the oldest events; null when nothing is queued. Under _sendGate.
        async Task<BatchResult> SendOneAsync(CancellationToken cancel)
        {
            var batch = new List<string>(_options.BatchSize);
            lock (_lock)
            {
                while (batch.Count < _options.BatchSize && _queue.Count > 0)
                {
                    batch.Add(_queue.First.Value);
                    _queue.RemoveFirst();
                }
                _inFlight = batch.Count;
            }
            if (batch.Count == 0) return null;
            BatchResult result;
            try
            {
                result = await PostAsync(batch, cancel).ConfigureAwait(false);
            }
            catch
            {
                Settle(batch, keep: true);  // cancelled (Stop's time limit): nothing is lost
                throw;
            }
            if (result.Outcome == BatchOutcome.Kept)
            {
                Interlocked.Increment(ref _failedAttempts);
                _failures++;
                result.RetryIn = NextDelay(result);
                Interlocked.Exchange(ref _notBeforeTicks, (_uptime.Elapsed + result.RetryIn).Ticks);
                // A wrong key or address is the operator's to fix: an error, not a passing outage.
                Log(Misconfigured(result.Status) ? LogLevel.Error : LogLevel.Warning,
                    "POST /v1/events: " + Describe(result) + "; " + batch.Count
                    + " events kept, retry in " + result.RetryIn.TotalSeconds.ToString("0.0", CultureInfo.InvariantCulture) + " s");
            }
            else
            {
                _failures = 0;
                Interlocked.Exchange(ref _notBeforeTicks, 0);
                if (result.Outcome == BatchOutcome.Delivered)
                {
                    Interlocked.Add(ref _delivered, batch.Count);
                }
                else
                {
                    Interlocked.Add(ref _dropped, batch.Count);
                    Log(LogLevel.Error, "POST /v1/events: " + Describe(result) + "; dropped " + batch.Count
                        + " events: the service will never accept this batch");
                }
            }
            result.Pending = Settle(batch, result.Outcome == BatchOutcome.Kept);
            var handler = BatchCompleted;
            if (handler != null)
            {
                try { handler(result); }
                catch (Exception e) { Log(LogLevel.Error, "BatchCompleted handler: " + e); }
            }
            return result;
        }

        // Returns the batch to the front of the queue (keep) or forgets it; returns Pending.
        int Settle(List<string> batch, bool keep)
        {
            lock (_lock)
            {
                _inFlight = 0;
                if (keep)
                {
                    for (int i = batch.Count - 1; i >= 0; i--) _queue.AddFirst(batch[i]);
                    TrimQueue();
                }
                return _queue.Count;
            }
        }

        static bool Misconfigured(int status)
        {
            return status == 401 || status == 403 || status == 404;
        }

        TimeSpan NextDelay(BatchResult result)
        {
            double seconds;
            if (Misconfigured(result.Status))
            {
                seconds = _options.BackoffMax.TotalSeconds;  // misconfigured: retry, but rarely
            }
            else
            {
                double exponential = _options.BackoffBase.TotalSeconds * Math.Pow(2, Math.Min(_failures - 1, 30));
                double capped = Math.Min(exponential, _options.BackoffMax.TotalSeconds);
                // Half fixed, half random: many clients refused at once do not come back at once.
                lock (_random) seconds = capped / 2 + _random.NextDouble() * capped / 2;
            }
            double retryAfter = Math.Min(result.RetryAfter.TotalSeconds, MaxRetryAfter.TotalSeconds);
            return TimeSpan.FromSeconds(Math.Max(seconds, retryAfter));
        }

        async Task<BatchResult> PostAsync(List<string> batch, CancellationToken cancel)
        {
            var result = new BatchResult { Events = batch.Count };
            var body = new StringBuilder(batch.Count * 128);
            body.Append('[');
            for (int i = 0; i < batch.Count; i++)
            {
                if (i > 0) body.Append(',');
                body.Append(batch[i]);
            }
            body.Append(']');
            byte[] bytes = Encoding.UTF8.GetBytes(body.ToString());
            if (_options.Gzip) bytes = GzipBytes(bytes);
            try
            {
                using (var request = new HttpRequestMessage(HttpMethod.Post, _eventsUri))
                {
                    var content = new ByteArrayContent(bytes);
                    content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
                    if (_options.Gzip) content.Headers.ContentEncoding.Add("gzip");
                    request.Content = content;
                    request.Headers.Add(ApiKeyHeader, _options.ApiKey);
                    using (var response = await _http.SendAsync(request, cancel).ConfigureAwait(false))
                    {
                        result.Status = (int)response.StatusCode;
                        string text = await response.Content.ReadAsStringAsync().ConfigureAwait(false);
                        Classify(result, response, text);
                    }
                }
            }
            catch (OperationCanceledException) when (!cancel.IsCancellationRequested)
            {
                result.Outcome = BatchOutcome.Kept;
                result.Error = "no answer within " + _options.RequestTimeout.TotalSeconds + " s";
            }
            catch (HttpRequestException e)
            {
                result.Outcome = BatchOutcome.Kept;
                result.Error = Innermost(e);
            }
            catch (WebException e)
            {
                result.Outcome = BatchOutcome.Kept;
                result.Error = e.Message;
            }
            return result;
        }

        void Classify(BatchResult result, HttpResponseMessage response, string text)
        {
            object parsed = null;
            try { parsed = Json.Parse(text); } catch (FormatException) { }
            var answer = parsed as Dictionary<string, object>;
            int status = result.Status;
            if (status >= 200 && status < 300)
            {
                result.Outcome = BatchOutcome.Delivered;
                object dead;
                if (answer != null && answer.TryGetValue("dead", out dead) && dead is double)
                    result.Dead = (int)(double)dead;
                if (result.Dead > 0)
                {
                    object reasons;
                    answer.TryGetValue("dead_reasons", out reasons);
                    Log(LogLevel.Warning, "the service dead-lettered " + result.Dead + " of " + result.Events
                        + " events (" + Json.WriteValue(reasons) + "): fix what the game sends");
                }
                return;
            }
            object reason, error;
            string says = null;
            if (answer != null && answer.TryGetValue("error", out error) && error is string) says = (string)error;
            if (answer != null && answer.TryGetValue("reason", out reason) && reason is string)
                says = (string)reason + (says != null ? ": " + says : "");
            result.Error = says ?? Abbreviate(text, 200);
            var retryAfter = response.Headers.RetryAfter;
            if (retryAfter != null)
            {
                if (retryAfter.Delta.HasValue) result.RetryAfter = retryAfter.Delta.Value;
                else if (retryAfter.Date.HasValue) result.RetryAfter = retryAfter.Date.Value - DateTimeOffset.UtcNow;
                if (result.RetryAfter < TimeSpan.Zero) result.RetryAfter = TimeSpan.Zero;
            }
            // Refused for good: the body (400), its size (413) or its encoding (415). Anything
            // else may pass later: rate limit (429), Kafka down (503), a misconfigured key.
            result.Outcome = status == 400 || status == 413 || status == 415
                ? BatchOutcome.Dropped : BatchOutcome.Kept;
        }

        static byte[] GzipBytes(byte[] data)
        {
            using (var output = new MemoryStream())
            {
                using (var gzip = new GZipStream(output, CompressionMode.Compress, true))
                    gzip.Write(data, 0, data.Length);
                return output.ToArray();
            }
        }

        // -- push stream --------------------------------------------------------------------

        async Task RunListenerAsync(CancellationToken stop)
        {
            int failures = 0;
            var buffer = new byte[8192];
            while (!stop.IsCancellationRequested)
            {
                bool connected = false, received = false;
                var since = _uptime.Elapsed;
                using (var socket = new ClientWebSocket())
                {
                    socket.Options.SetRequestHeader(ApiKeyHeader, _options.ApiKey);
                    socket.Options.KeepAliveInterval = TimeSpan.FromSeconds(20);
                    try
                    {
                        using (var connect = CancellationTokenSource.CreateLinkedTokenSource(stop))
                        {
                            connect.CancelAfter(_options.RequestTimeout);
                            await socket.ConnectAsync(_streamUri, connect.Token).ConfigureAwait(false);
                        }
                        connected = true;
                        Log(LogLevel.Info, "push stream connected: " + _streamUri.AbsolutePath);
                        RaiseStreamChanged(true);
                        received = await ReceiveAllAsync(socket, buffer, stop).ConfigureAwait(false);
                    }
                    catch (Exception) when (stop.IsCancellationRequested)
                    {
                        // Stopped (Mono reports an aborted connect as a disposed socket).
                        if (connected) RaiseStreamChanged(false);
                        return;
                    }
                    catch (Exception e)
                    {
                        Log(LogLevel.Warning, "push stream " + (connected ? "lost" : "not connected") + ": " + Innermost(e));
                    }
                }
                if (connected) RaiseStreamChanged(false);
                // A connection that lasted or carried updates was healthy: start over from the base delay.
                if (received || _uptime.Elapsed - since > _options.BackoffMax) failures = 0;
                failures++;
                double exponential = _options.BackoffBase.TotalSeconds * Math.Pow(2, Math.Min(failures - 1, 30));
                double capped = Math.Min(exponential, _options.BackoffMax.TotalSeconds);
                double seconds;
                lock (_random) seconds = capped / 2 + _random.NextDouble() * capped / 2;
                await DelayQuietly(TimeSpan.FromSeconds(seconds), stop).ConfigureAwait(false);
            }
        }

        // Raises Updated per text message until the connection closes; returns whether any came.
        async Task<bool> ReceiveAllAsync(ClientWebSocket socket, byte[] buffer, CancellationToken stop)
        {
            bool any = false;
            var message = new MemoryStream();
            while (socket.State == WebSocketState.Open)
            {
                var part = await socket.ReceiveAsync(new ArraySegment<byte>(buffer), stop).ConfigureAwait(false);
                if (part.MessageType == WebSocketMessageType.Close)
                {
                    // 1013 (try again later): the service dropped us for falling behind.
                    Log(LogLevel.Warning, "push stream closed by the service: " + (int?)socket.CloseStatus
                        + " " + socket.CloseStatusDescription);
                    try
                    {
                        await socket.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "", stop).ConfigureAwait(false);
                    }
                    catch (WebSocketException) { }
                    return any;
                }
                message.Write(buffer, 0, part.Count);
                if (message.Length > MaxPushBytes)
                    throw new InvalidDataException("a pushed message over " + MaxPushBytes + " bytes");
                if (!part.EndOfMessage) continue;
                if (part.MessageType == WebSocketMessageType.Text)
                {
                    any = true;
                    string text = Encoding.UTF8.GetString(message.GetBuffer(), 0, (int)message.Length);
                    var handler = Updated;
                    if (handler != null)
                    {
                        try { handler(text); }
                        catch (Exception e) { Log(LogLevel.Error, "Updated handler: " + e); }
                    }
                }
                message.SetLength(0);
            }
            return any;
        }

        void RaiseStreamChanged(bool connected)
        {
            var handler = StreamChanged;
            if (handler == null) return;
            try { handler(connected); }
            catch (Exception e) { Log(LogLevel.Error, "StreamChanged handler: " + e); }
        }

        // -- helpers ------------------------------------------------------------------------

        static async Task DelayQuietly(TimeSpan delay, CancellationToken stop)
        {
            try { await Task.Delay(delay, stop).ConfigureAwait(false); }
            catch (OperationCanceledException) { }
        }

        void Log(LogLevel level, string message)
        {
            var log = _options.Log;
            if (log == null) return;
            try { log(level, message); }
            catch { }  // a failing logger must not stop sending
        }

        static string Describe(BatchResult result)
        {
            return (result.Status == 0 ? "no answer" : "HTTP " + result.Status)
                + (result.Error != null ? " (" + result.Error + ")" : "");
        }

        static string Innermost(Exception e)
        {
            while (e.InnerException != null) e = e.InnerException;
            return e.GetType().Name + ": " + e.Message;
        }

        static string Abbreviate(string text, int length)
        {
            return text.Length <= length ? text : text.Substring(0, length) + "...";
        }
    }

    /// <summary>The little JSON the client needs: writing flat event dictionaries, reading the
    /// service's answers, checking pre-serialized events.</summary>
    public static class Json
    {
        /// <summary>A flat object: values string, bool, null, numbers, DateTime/DateTimeOffset
        /// (ISO 8601 UTC with milliseconds; a DateTime of unspecified kind is taken as UTC),
        /// enums (by name).</summary>
        /// <exception cref="ArgumentException">A value of another type (named by its key).</exception>
        public static string WriteObject(IDictionary<string, object> fields)
        {
            var text = new StringBuilder(128);
            text.Append('{');
            bool first = true;
            foreach (var field in fields)
            {
                if (!first) text.Append(',');
                first = false;
                WriteString(text, field.Key);
                text.Append(':');
                if (!WriteScalar(text, field.Value))
                    throw new ArgumentException("field '" + field.Key + "': a " + field.Value.GetType().Name
                        + " is not a string, number, bool, null or DateTime");
            }
            text.Append('}');
            return text.ToString();
        }

        /// <summary>Any parsed value back as JSON (for log lines).</summary>
        public static string WriteValue(object value)
        {
            var text = new StringBuilder();
            Write(text, value);
            return text.ToString();
        }

        static void Write(StringBuilder text, object value)
        {
            if (WriteScalar(text, value)) return;
            var map = value as IDictionary<string, object>;
            if (map != null)
            {
                text.Append('{');
                bool first = true;
                foreach (var field in map)
                {
                    if (!first) text.Append(',');
                    first = false;
                    WriteString(text, field.Key);
                    text.Append(':');
                    Write(text, field.Value);
                }
                text.Append('}');
                return;
            }
            var list = value as IEnumerable;
            if (list == null) throw new ArgumentException("not JSON: " + value.GetType().Name);
            text.Append('[');
            bool head = true;
            foreach (var item in list)
            {
                if (!head) text.Append(',');
                head = false;
                Write(text, item);
            }
            text.Append(']');
        }

        static bool WriteScalar(StringBuilder text, object value)
        {
            var invariant = CultureInfo.InvariantCulture;
            if (value == null) text.Append("null");
            else if (value is string) WriteString(text, (string)value);
            else if (value is bool) text.Append((bool)value ? "true" : "false");
            else if (value is double || value is float)
            {
                double d = Convert.ToDouble(value, invariant);
                // JSON has no NaN or infinity: null says "no value" without breaking the body.
                if (double.IsNaN(d) || double.IsInfinity(d)) text.Append("null");
                // A float as written (0.1f is 0.1, not its double 0.100000001490116).
                else if (value is float) text.Append(((float)value).ToString("R", invariant));
                else text.Append(d.ToString("R", invariant));
            }
            else if (value is int || value is long || value is short || value is byte || value is sbyte
                || value is uint || value is ulong || value is ushort || value is decimal)
                text.Append(Convert.ToString(value, invariant));
            else if (value is DateTime)
            {
                var time = (DateTime)value;  // Unspecified is taken as UTC, Local converted
                if (time.Kind == DateTimeKind.Local) time = time.ToUniversalTime();
                WriteString(text, time.ToString("yyyy-MM-dd'T'HH:mm:ss.fff'Z'", invariant));
            }
            else if (value is DateTimeOffset)
                WriteString(text, ((DateTimeOffset)value).UtcDateTime.ToString("yyyy-MM-dd'T'HH:mm:ss.fff'Z'", invariant));
            else if (value is Enum) WriteString(text, value.ToString());
            else return false;
            return true;
        }

        static void WriteString(StringBuilder text, string value)
        {
            text.Append('"');
            foreach (char c in value)
            {
                switch (c)
                {
                    case '"': text.Append("\\\""); break;
                    case '\\': text.Append("\\\\"); break;
                    case '\n': text.Append("\\n"); break;
                    case '\r': text.Append("\\r"); break;
                    case '\t': text.Append("\\t"); break;
                    default:
                        if (c < ' ' || c == '\u2028' || c == '\u2029')
                            text.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                        else
                            text.Append(c);
                        break;
                }
            }
            text.Append('"');
        }

        /// <summary>Null when <paramref name="json"/> is one JSON object, else what is wrong.</summary>
        public static string CheckObject(string json)
        {
            try
            {
                return Parse(json) is Dictionary<string, object> ? null : "not an object";
            }
            catch (FormatException e)
            {
                return e.Message;
            }
        }

        /// <summary>Objects as Dictionary&lt;string, object&gt;, arrays as List&lt;object&gt;,
        /// numbers as double.</summary>
        /// <exception cref="FormatException">Not one JSON value.</exception>
        public static object Parse(string json)
        {
            int at = 0;
            object value = ReadValue(json, ref at, 0);
            SkipSpace(json, ref at);
            if (at != json.Length) throw Bad(json, at, "text after the value");
            return value;
        }

        static FormatException Bad(string json, int at, string what)
        {
            return new FormatException(what + " at character " + at);
        }

        static void SkipSpace(string json, ref int at)
        {
            while (at < json.Length && (json[at] == ' ' || json[at] == '\t' || json[at] == '\n' || json[at] == '\r')) at++;
        }

        static object ReadValue(string json, ref int at, int depth)
        {
            if (depth > 64) throw Bad(json, at, "nested too deep");
            SkipSpace(json, ref at);
            if (at >= json.Length) throw Bad(json, at, "a value is missing");
            char c = json[at];
            if (c == '{')
            {
                var map = new Dictionary<string, object>();
                at++;
                SkipSpace(json, ref at);
                if (at < json.Length && json[at] == '}') { at++; return map; }
                while (true)
                {
                    SkipSpace(json, ref at);
                    if (at >= json.Length || json[at] != '"') throw Bad(json, at, "a key is missing");
                    string key = ReadString(json, ref at);
                    SkipSpace(json, ref at);
                    if (at >= json.Length || json[at] != ':') throw Bad(json, at, "':' is missing");
                    at++;
                    map[key] = ReadValue(json, ref at, depth + 1);
                    SkipSpace(json, ref at);
                    if (at < json.Length && json[at] == ',') { at++; continue; }
                    if (at < json.Length && json[at] == '}') { at++; return map; }
                    throw Bad(json, at, "',' or '}' is missing");
                }
            }
            if (c == '[')
            {
                var list = new List<object>();
                at++;
                SkipSpace(json, ref at);
                if (at < json.Length && json[at] == ']') { at++; return list; }
                while (true)
                {
                    list.Add(ReadValue(json, ref at, depth + 1));
                    SkipSpace(json, ref at);
                    if (at < json.Length && json[at] == ',') { at++; continue; }
                    if (at < json.Length && json[at] == ']') { at++; return list; }
                    throw Bad(json, at, "',' or ']' is missing");
                }
            }
            if (c == '"') return ReadString(json, ref at);
            if (string.CompareOrdinal(json, at, "true", 0, 4) == 0) { at += 4; return true; }
            if (string.CompareOrdinal(json, at, "false", 0, 5) == 0) { at += 5; return false; }
            if (string.CompareOrdinal(json, at, "null", 0, 4) == 0) { at += 4; return null; }
            int start = at;
            if (at < json.Length && json[at] == '-') at++;
            while (at < json.Length && (char.IsDigit(json[at]) || json[at] == '.' || json[at] == 'e'
                   || json[at] == 'E' || json[at] == '+' || json[at] == '-')) at++;
            double number;
            if (at == start || !double.TryParse(json.Substring(start, at - start), NumberStyles.Float,
                    CultureInfo.InvariantCulture, out number))
                throw Bad(json, start, "not a JSON value");
            return number;
        }

        static string ReadString(string json, ref int at)
        {
            var text = new StringBuilder();
            at++;  // the opening quote
            while (at < json.Length)
            {
                char c = json[at++];
                if (c == '"') return text.ToString();
                if (c < ' ') throw Bad(json, at - 1, "a raw control character in a string");
                if (c != '\\') { text.Append(c); continue; }
                if (at >= json.Length) break;
                char e = json[at++];
                switch (e)
                {
                    case '"': case '\\': case '/': text.Append(e); break;
                    case 'b': text.Append('\b'); break;
                    case 'f': text.Append('\f'); break;
                    case 'n': text.Append('\n'); break;
                    case 'r': text.Append('\r'); break;
                    case 't': text.Append('\t'); break;
                    case 'u':
                        int code;
                        if (at + 4 > json.Length || !int.TryParse(json.Substring(at, 4), NumberStyles.HexNumber,
                                CultureInfo.InvariantCulture, out code))
                            throw Bad(json, at, "a bad \\u escape");
                        text.Append((char)code);
                        at += 4;
                        break;
                    default: throw Bad(json, at - 1, "a bad escape");
                }
            }
            throw Bad(json, at, "a string is not terminated");
        }
    }
}
