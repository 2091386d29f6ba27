// Thermocline in a Unity scene: a thin MonoBehaviour around ThermoclineClient (README.md).
// Not compiled in CI (no UnityEngine there); the core it wraps is.

using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using UnityEngine;

namespace Thermocline
{
    /// <summary>Put on a GameObject of the first scene; it lives across scenes. Track events
    /// with <c>ThermoclineBehaviour.Instance.Track("level_up", ...)</c>; subscribe to
    /// <see cref="Updated"/> for the player's pushed updates, raised on the main thread.</summary>
    public sealed class ThermoclineBehaviour : MonoBehaviour
    {
        [SerializeField] string endpoint = "https://ingest.example.com";
        [SerializeField] string apiKey = "";
        [Tooltip("Empty: an id made on first run and kept in PlayerPrefs")]
        [SerializeField] string playerId = "";
        [SerializeField] float flushIntervalSeconds = 5f;
        [SerializeField] int maxQueue = 10000;
        [Tooltip("How long pausing (going to the background) may block to send what is queued")]
        [SerializeField] float pauseFlushSeconds = 1f;
        [Tooltip("How long quitting may block to send what is queued")]
        [SerializeField] float quitFlushSeconds = 2f;
        // Pushed updates handed to the game per frame at most: a burst never stalls a frame.
        const int UpdatesPerFrame = 100;

        public static ThermoclineBehaviour Instance { get; private set; }
        public ThermoclineClient Client { get; private set; }
        /// <summary>A pushed update (JSON text), on the main thread.</summary>
        public event Action<string> Updated;

        readonly ConcurrentQueue<string> _pushed = new ConcurrentQueue<string>();

        void Awake()
        {
            if (Instance != null && Instance != this)
            {
                Destroy(gameObject);
                return;
            }
            Instance = this;
            DontDestroyOnLoad(gameObject);
            Client = new ThermoclineClient(new ThermoclineOptions
            {
                Endpoint = endpoint,
                ApiKey = apiKey,
                PlayerId = string.IsNullOrEmpty(playerId) ? StoredPlayerId() : playerId,
                FlushInterval = TimeSpan.FromSeconds(flushIntervalSeconds),
                MaxQueue = maxQueue,
                // Debug.Log may be called from any thread.
                Log = (level, message) =>
                {
                    if (level >= LogLevel.Error) Debug.LogError("[Thermocline] " + message);
                    else if (level == LogLevel.Warning) Debug.LogWarning("[Thermocline] " + message);
                    else Debug.Log("[Thermocline] " + message);
                },
            });
            // Raised on a thread-pool thread: queued here, handed to the game in Update.
            Client.Updated += message => _pushed.Enqueue(message);
            Client.Start();
        }

        static string StoredPlayerId()
        {
            const string key = "thermocline.player_id";
            string id = PlayerPrefs.GetString(key, "");
            if (id.Length == 0)
            {
                id = Guid.NewGuid().ToString("N");
                PlayerPrefs.SetString(key, id);
                PlayerPrefs.Save();
            }
            return id;
        }

        /// <summary>Queue an event of <paramref name="eventType"/> with optional flat fields
        /// (string, number, bool, null, DateTime); event_id, player_id and event_time are added.</summary>
        public bool Track(string eventType, IDictionary<string, object> fields = null)
        {
            var all = fields != null ? new Dictionary<string, object>(fields) : new Dictionary<string, object>();
            all["event_type"] = eventType;
            return Client.Track(all);
        }

        void Update()
        {
            var handler = Updated;
            string message;
            for (int i = 0; i < UpdatesPerFrame && _pushed.TryDequeue(out message); i++)
                if (handler != null) handler(message);
        }

        void OnApplicationPause(bool paused)
        {
            // Mobile: a paused app may be killed without another callback; send what is queued.
            if (paused) WaitQuietly(Client.FlushAsync(), pauseFlushSeconds);
        }

        void OnApplicationQuit()
        {
            Client.Stop(TimeSpan.FromSeconds(quitFlushSeconds));
        }

        void OnDestroy()
        {
            if (Instance != this) return;
            Client.Dispose();
            Instance = null;
        }

        // The core never resumes on the main thread, so blocking here cannot deadlock.
        static void WaitQuietly(System.Threading.Tasks.Task task, float seconds)
        {
            try { task.Wait(TimeSpan.FromSeconds(seconds)); }
            catch (AggregateException) { }  // what was not sent stays queued
        }
    }
}
